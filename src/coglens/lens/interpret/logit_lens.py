"""The logit lens: what each decoder layer's residual stream would predict if the model stopped there.

Layer ``i``'s residual stream (its output) goes through the final norm and ``lm_head``, as the last layer's does;
the last row is the model's own logits. Each analysed position tracks one *target* token: with an ``answer``, the
answer is appended to the prompt (teacher-forced) and the position before each answer token tracks that token;
otherwise every position tracks the token that follows it and the last one the model's own next-token choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from coglens.lens.capture.select import SelectionError, TokenSpec, token_positions
from coglens.modeling.routing import VISION_TOKEN_TYPE

from .heatmap import draw_grid

IMAGE_TOKEN = "<image>"
MAX_DRAWN_POSITIONS = 64


class LogitLensError(ValueError):
    """A logit-lens request that cannot be answered (a selection with no position, an empty answer...)."""


@dataclass(frozen=True)
class LogitLens:
    """Per layer (``layers``: ``embeddings``, then ``0`` .. ``N-1``) and analysed position: the top-k tokens with
    their probabilities, and the probability of the position's target token (NaN, target id -1, where the next
    token is an image placeholder: nothing to predict)."""

    layers: list[str]
    positions: list[int]  # indices into the (prompt + answer) sequence
    inputs: list[str]  # the token at each analysed position
    targets: list[str]  # the token each analysed position is scored on
    target_ids: list[int]
    top_ids: torch.Tensor  # [layers, positions, k]
    top_probs: torch.Tensor  # [layers, positions, k]
    top_tokens: list[list[list[str]]]
    target_probs: torch.Tensor  # [layers, positions]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "positions": self.positions, "inputs": self.inputs, "targets": self.targets,
                "target_ids": self.target_ids,
                "target_probs": [[None if p != p else p for p in row] for row in self.target_probs.tolist()],
                "top_ids": self.top_ids.tolist(), "top_probs": self.top_probs.tolist(), "top_tokens": self.top_tokens}


@torch.no_grad()
def logit_lens(pipeline: Any, query: str, *, images: list[Any] | None = None, template: str | None = None,
               answer: str | None = None, positions: str | None = None, top_k: int = 5,
               embeddings: bool = True) -> LogitLens:
    """Run ``query`` (with ``images``) once and read every layer through the final norm and ``lm_head`` at the
    ``positions`` selected: a lens token selection, or ``answer`` (the positions predicting the answer's tokens,
    the default with an ``answer``; without one the default is ``last``)."""
    if top_k < 1:
        raise LogitLensError(f"top_k={top_k} must be >= 1")
    model, tokenizer = pipeline.model, pipeline.tokenizer
    built = pipeline.build_inputs(query, images=images, template=template)
    ids, types = built["input_ids"], built["token_type_ids"]
    prompt_len = ids.numel()
    answer_ids: list[int] = []
    if answer is not None:
        chat_cue = (template or pipeline.config.template_version) != "base"  # base continues the text as is
        text = " " + answer if chat_cue and not answer[:1].isspace() else answer  # the space after "Answer:"
        answer_ids = tokenizer.encode(text, add_special_tokens=False)
        if not answer.strip() or not answer_ids:
            raise LogitLensError("the answer is empty; give the text the model should answer")
        ids = torch.cat((ids, torch.tensor(answer_ids)))
        types = torch.cat((types, torch.zeros(len(answer_ids), dtype=types.dtype)))
    chosen = _positions(positions or ("answer" if answer_ids else "last"), types, prompt_len, len(answer_ids))
    device = model.get_input_embeddings().weight.device
    out = model(input_ids=ids[None].to(device), token_type_ids=types[None].to(device),
                images=[list(built["images"] or [])], output_hidden_states=True)
    hidden = out.hidden_states  # embeddings, outputs of layers 0..N-2, then the last layer's output normed
    index = torch.tensor(chosen, device=device)
    norm, head = model.model.norm, model.lm_head
    rows = [head(norm(h[0, index])) for h in hidden[:-1]] + [head(hidden[-1][0, index])]
    names = ["embeddings", *(str(i) for i in range(len(hidden) - 1))]
    if not embeddings:
        rows, names = rows[1:], names[1:]
    probs = torch.stack(rows).float().softmax(-1).cpu()  # [layers, positions, vocab]
    final = out.logits[0, -1].argmax().item()
    sequence = ids.tolist()
    kinds = types.tolist()
    # a position followed by an image placeholder has no token to predict (its "id" is a placeholder): NaN there
    placeholder = [p + 1 < len(sequence) and kinds[p + 1] == VISION_TOKEN_TYPE for p in chosen]
    target_ids = [-1 if skip else sequence[p + 1] if p + 1 < len(sequence) else final
                  for p, skip in zip(chosen, placeholder, strict=True)]
    top_probs, top_ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    index = torch.tensor([max(t, 0) for t in target_ids])[None, :, None].expand(len(rows), -1, 1)
    target_probs = probs.gather(-1, index)[..., 0].masked_fill(torch.tensor(placeholder)[None], float("nan"))
    texts = _token_texts(tokenizer, sequence, kinds)
    return LogitLens(
        layers=names, positions=chosen, inputs=[texts[p] for p in chosen],
        targets=[IMAGE_TOKEN if t < 0 else tokenizer.decode([t]) for t in target_ids], target_ids=target_ids,
        top_ids=top_ids,
        top_probs=top_probs, top_tokens=[[[tokenizer.decode([t]) for t in cell] for cell in row] for row in
                                         top_ids.tolist()], target_probs=target_probs)


def _positions(spec: str, types: torch.Tensor, prompt_len: int, answer_len: int) -> list[int]:
    if spec == "answer":
        if not answer_len:
            raise LogitLensError("positions 'answer' needs an answer")
        return list(range(prompt_len - 1, prompt_len + answer_len - 1))
    try:
        picked = token_positions(TokenSpec.parse(spec), token_type_ids=types[None])[0].tolist()
    except SelectionError as error:
        raise LogitLensError(f"positions {spec!r}: {error}") from None
    if not picked:
        raise LogitLensError(f"positions {spec!r} select no token of this prompt")
    return picked


def _token_texts(tokenizer: Any, ids: list[int], types: list[int]) -> list[str]:
    return [IMAGE_TOKEN if kind == VISION_TOKEN_TYPE else tokenizer.decode([i]) for i, kind in zip(ids, types,
                                                                                                   strict=True)]


def render(lens: LogitLens, *, cell: tuple[int, int] = (96, 26)) -> Image.Image:
    """Layers (rows, last on top) x positions (columns): each cell coloured by the target token's probability
    (absolute, 0 to 1) and labelled with that layer's top token; input tokens along the bottom, targets on top."""
    width, height = cell
    n_layers, n_positions = lens.target_probs.shape
    if n_positions > MAX_DRAWN_POSITIONS:
        raise LogitLensError(f"{n_positions} positions are too many to draw (at most {MAX_DRAWN_POSITIONS}); pick "
                             "fewer, e.g. positions slice:-32: or text")
    font = ImageFont.load_default(size=12)
    margin_left, margin_top, margin_bottom = 120, height, 2 * height
    picture = Image.new("RGB", (margin_left + n_positions * width, margin_top + n_layers * height + margin_bottom),
                        "white")
    draw = ImageDraw.Draw(picture)
    texts = [[_short(lens.top_tokens[row][col][0]) for col in range(n_positions)] for row in range(n_layers)]
    draw_grid(draw, np.nan_to_num(lens.target_probs.numpy(), nan=0.0), texts,
              [f"layer {name}" for name in lens.layers], origin=(margin_left, margin_top), cell=cell, font=font)
    for col in range(n_positions):
        x = margin_left + col * width + 3
        draw.text((x, 6), "-> " + _short(lens.targets[col]), fill="black", font=font)
        draw.text((x, margin_top + n_layers * height + 6), _short(lens.inputs[col]), fill="black", font=font)
    draw.text((4, margin_top + n_layers * height + height + 6),
              "cell: top token; colour: p(target) 0..1",
              fill="black", font=font)
    return picture


def _short(text: str, limit: int = 11) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"
