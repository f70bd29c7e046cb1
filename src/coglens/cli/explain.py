"""``coglens explain``: which parts of the image the answer looked at, as a heat map over the image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    AdapterOpt,
    DeviceOpt,
    DtypeOpt,
    MaxNewTokensOpt,
    ModelOpt,
    QuantizeOpt,
    QuantizeVisionOpt,
    TemplateOpt,
    TokenizerOpt,
    check_adapter,
    check_dtype,
    check_input_file,
    check_output_file,
    check_quantize,
)

ExplainImageOpt = Annotated[Path, typer.Option("--image", "-i", help="Image file to ask about.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="PNG to write the heat map to.")]
LayersOpt = Annotated[str, typer.Option("--layers", help="Decoder layers to average: all, or e.g. 0,1,-1.")]
HeadsOpt = Annotated[str, typer.Option("--heads", help="Query heads to average: all, or e.g. 0,3.")]
AlphaOpt = Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Heat map opacity over the image, 0-1.")]


def explain(
    question: Annotated[str, typer.Argument(help="What to ask about the image.")],
    image: ExplainImageOpt,
    out: OutOpt = Path("output/attention.png"),
    layers: LayersOpt = "all",
    heads: HeadsOpt = "all",
    alpha: AlphaOpt = 0.5,
    model: ModelOpt = None,
    tokenizer: TokenizerOpt = None,
    template: TemplateOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    quantize: QuantizeOpt = None,
    quantize_vision: QuantizeVisionOpt = False,
    adapter: AdapterOpt = None,
    max_new_tokens: MaxNewTokensOpt = 32,
) -> None:
    """Answer (greedy), then picture how much each image patch is attended to by the answer's tokens."""
    # Everything that can be checked without the model is, before torch and the model load (seconds).
    if out.suffix.lower() != ".png":
        raise typer.BadParameter(f"--out {out} should be a .png file")
    check_input_file(image, "--image")
    check_output_file(out, "--out")
    check_dtype(dtype)
    check_quantize(quantize, quantize_vision)
    check_adapter(adapter, quantize)
    _check_selection(layers, "--layers")
    _check_selection(heads, "--heads")

    from ..engine import SamplingParams
    from ..lens.interpret.attention import image_attention, parse_selection
    from ..lens.interpret.heatmap import attention_overlay
    from ..pipeline import Pipeline
    from ..processing.image import load_image

    picture = load_image(image)
    pipe = Pipeline.load(model, tokenizer=tokenizer, dtype=dtype, device=device, max_batch_size=1,
                         quantize=quantize, quantize_vision=quantize_vision,
                         adapter=adapter)
    config = pipe.config
    result = image_attention(
        pipe, picture, question, template=template, params=SamplingParams(max_new_tokens=max_new_tokens),
        layers=parse_selection(layers, config.num_hidden_layers, "layer"),
        heads=parse_selection(heads, config.num_attention_heads, "head"),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    attention_overlay(picture, result.grid, alpha=alpha).save(out)
    typer.echo(result.answer)
    side = result.grid.shape[0]
    typer.echo(f"{result.image_share:.1%} of the answer's attention is on the image ({side}x{side} patches; "
               f"{len(result.layers)} layer(s), {len(result.heads)} head(s)); heat map saved to {out}",
               err=True)


def _check_selection(spec: str, option: str) -> None:
    """The form of --layers / --heads (``all`` or comma-separated numbers); the range needs the model's config."""
    if spec.strip().lower() == "all":
        return
    parts = [part for part in spec.split(",") if part.strip()]
    try:
        for part in parts:
            int(part)
    except ValueError:
        parts = []
    if not parts:
        raise typer.BadParameter(f"{spec!r}: give 'all' or comma-separated numbers, e.g. 0,1,-1", param_hint=option)
