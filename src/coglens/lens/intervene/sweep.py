"""Activation patching over layers and positions: which activations carry what makes the clean answer.

The clean and the corrupted prompt must have the same token layout (the same query with two images, or two queries
of the same length). For every decoder layer and every column (all image tokens together, then each text token),
the corrupted prompt runs with the clean prompt's activation patched in there, and the *recovery* is read at the
last position: ``(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)``, where ``LD`` is the logit of the clean
answer's next token minus the corrupted answer's. 1: patching there restores the clean answer; 0: no effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from coglens.lens.capture.trace import Trace
from coglens.lens.interpret.heatmap import draw_grid
from coglens.modeling.routing import VISION_TOKEN_TYPE

from .context import Intervene
from .edits import Patch
from .layout import InterventionError


@dataclass(frozen=True)
class PatchingSweep:
    layers: list[int]
    columns: list[str]  # "image" (every vision token at once), then each text token's text
    positions: list[list[int]]  # the sequence positions each column patches
    recovery: np.ndarray  # [layers, columns]
    clean_token: str
    corrupted_token: str

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "columns": self.columns, "positions": self.positions,
                "recovery": self.recovery.tolist(), "clean_token": self.clean_token,
                "corrupted_token": self.corrupted_token}


@torch.no_grad()
def patching_sweep(pipeline: Any, clean: dict[str, Any], corrupted: dict[str, Any], *,
                   layers: Sequence[int] | None = None) -> PatchingSweep:
    """Patch ``clean``'s decoder-layer outputs into ``corrupted`` one (layer, column) at a time. ``clean`` and
    ``corrupted`` are :meth:`~coglens.pipeline.Pipeline.build_inputs` keyword arguments (``query``, ``images``...)."""
    model, tokenizer = pipeline.model, pipeline.tokenizer
    count = model.config.num_hidden_layers
    chosen = list(range(count)) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise InterventionError(f"layers {bad} do not exist; this model has decoder layers 0..{count - 1}")
    a, b = _args(pipeline, clean), _args(pipeline, corrupted)
    if a["token_type_ids"].shape != b["token_type_ids"].shape or not torch.equal(a["token_type_ids"],
                                                                                  b["token_type_ids"]):
        raise InterventionError("the clean and corrupted prompts must have the same token layout (same length, "
                                "images in the same places); change only the image or same-length words")
    names = [f"model.layers.{i}" for i in chosen]
    with Trace(model, names) as trace:
        clean_logits = model(**a).logits[0, -1]
    corrupted_logits = model(**b).logits[0, -1]
    good, bad_token = int(clean_logits.argmax()), int(corrupted_logits.argmax())
    if good == bad_token:
        raise InterventionError(f"both prompts predict {tokenizer.decode([good])!r} next: there is no difference to "
                                "recover; pick a corruption that changes the answer")

    def difference(logits: torch.Tensor) -> float:
        return float(logits[good] - logits[bad_token])

    base, span = difference(corrupted_logits), difference(clean_logits) - difference(corrupted_logits)
    types = a["token_type_ids"][0]
    vision = (types == VISION_TOKEN_TYPE).nonzero().flatten().tolist()
    text = [p for p in range(1, types.numel()) if types[p] != VISION_TOKEN_TYPE]
    ids = a["input_ids"][0].tolist()
    columns = (["image"] if vision else []) + [tokenizer.decode([ids[p]]) for p in text]
    positions = ([vision] if vision else []) + [[p] for p in text]
    recovery = np.zeros((len(chosen), len(columns)))
    for row, name in enumerate(names):
        activation = trace.get(name)
        assert isinstance(activation, torch.Tensor)
        for col, where in enumerate(positions):
            with Intervene(model, [Patch(name, activation[0, where], tokens=where)]):
                recovery[row, col] = (difference(model(**b).logits[0, -1]) - base) / span
    return PatchingSweep(chosen, columns, positions, recovery, tokenizer.decode([good]), tokenizer.decode([bad_token]))


def _args(pipeline: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    built = pipeline.build_inputs(**inputs)
    device = pipeline.model.get_input_embeddings().weight.device
    return {"input_ids": built["input_ids"][None].to(device),
            "token_type_ids": built["token_type_ids"][None].to(device), "images": [list(built["images"] or [])]}


def render_sweep(sweep: PatchingSweep, *, cell: tuple[int, int] = (70, 26)) -> Image.Image:
    """Layers (rows, last on top) x columns: colour = recovery clipped to [0, 1], the value written in the cell."""
    width, height = cell
    font = ImageFont.load_default(size=12)
    left, top = 80, 2 * height
    rows, cols = sweep.recovery.shape
    picture = Image.new("RGB", (left + cols * width, top + (rows + 1) * height), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((4, 6), f"recovery of {sweep.clean_token!r} over {sweep.corrupted_token!r} (1 = clean answer back)",
              fill="black", font=font)
    texts = [[f"{value:.2f}" for value in row] for row in sweep.recovery]
    draw_grid(draw, np.clip(sweep.recovery, 0.0, 1.0), texts, [f"layer {layer}" for layer in sweep.layers],
              origin=(left, top), cell=cell, font=font)
    for col, label in enumerate(sweep.columns):
        shown = label.replace("\n", "\\n")
        draw.text((left + col * width + 4, top + rows * height + 6), shown if len(shown) <= 9 else shown[:8] + "…",
                  fill="black", font=font)
    return picture
