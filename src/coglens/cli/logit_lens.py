"""``coglens logit-lens``: each layer's residual stream through the final norm and lm_head, as a table and a picture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    AdapterOpt,
    DeviceOpt,
    DtypeOpt,
    ImageOpt,
    ModelOpt,
    TemplateOpt,
    TokenizerOpt,
    check_adapter,
    check_dtype,
    check_input_file,
    check_output_file,
)

AnswerOpt = Annotated[str | None, typer.Option(
    "--answer", "-a", help="Score this answer (teacher-forced): each layer's probability of each of its tokens.")]
PositionsOpt = Annotated[str | None, typer.Option(
    "--positions", help="Positions to read: answer (default with --answer), last (default), text, image, [3,5], "
                        "slice:-6:.")]
TopKOpt = Annotated[int, typer.Option("--top-k", min=1, max=50, help="Most likely tokens kept per layer/position.")]
PlotOpt = Annotated[Path, typer.Option("--out", "-o", help="PNG of the layers x positions heat map.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Also write every number to this JSON file.")]


def logit_lens(
    question: Annotated[str, typer.Argument(help="The prompt to read.")],
    image: ImageOpt = None,
    answer: AnswerOpt = None,
    positions: PositionsOpt = None,
    top_k: TopKOpt = 3,
    out: PlotOpt = Path("output/logit_lens.png"),
    json_out: JsonOpt = None,
    model: ModelOpt = None,
    tokenizer: TokenizerOpt = None,
    template: TemplateOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    adapter: AdapterOpt = None,
) -> None:
    """What every decoder layer would predict: top tokens and the target token's probability per layer."""
    if out.suffix.lower() != ".png":
        raise typer.BadParameter(f"--out {out} should be a .png file")
    check_input_file(image, "--image")
    check_output_file(out, "--out")
    check_output_file(json_out, "--json")
    check_dtype(dtype)
    check_adapter(adapter, None)

    from ..lens.interpret.logit_lens import logit_lens as run_logit_lens
    from ..lens.interpret.logit_lens import render
    from ..pipeline import Pipeline

    pipe = Pipeline.load(model, tokenizer=tokenizer, dtype=dtype, device=device, max_batch_size=1, adapter=adapter)
    lens = run_logit_lens(pipe, question, images=[str(image)] if image else None, template=template, answer=answer,
                          positions=positions, top_k=top_k)
    for line in table(lens.layers, lens.inputs, lens.targets, lens.top_tokens, lens.target_probs.tolist()):
        typer.echo(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    render(lens).save(out)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(lens.to_dict(), ensure_ascii=False))
    typer.echo(f"heat map saved to {out}" + (f", numbers to {json_out}" if json_out else ""), err=True)


def table(layers: list[str], inputs: list[str], targets: list[str], top: list[list[list[str]]],
          probs: list[list[float]], width: int = 18) -> list[str]:
    """One line per layer (last first): per position, that layer's top token and the target's probability."""
    def cell(text: str) -> str:
        text = repr(text)[1:-1]
        return (text if len(text) <= width else text[: width - 1] + "…").ljust(width)

    lines = [cell("position") + "".join(cell(f"{i!r}→{t!r}") for i, t in zip(inputs, targets, strict=True))]
    for row in reversed(range(len(layers))):
        lines.append(cell(f"layer {layers[row]}") + "".join(
            cell(f"{top[row][col][0]!r} {probs[row][col]:.2f}") for col in range(len(inputs))))
    return lines
