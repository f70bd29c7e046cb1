"""One batch through the model under a :class:`Trace`, and its captures turned into store records.

The prefill (default) is one forward pass without a KV cache that stops as soon as every requested module has
fired. With ``steps: all`` and ``forward.max_new_tokens`` the batch is generated with ``model.generate`` and
every forward call is captured with its step; steps after a row's end of sequence are dropped for that row.

Rows: a language-model output ([B, L, ...]) is split per row by the token selection of
:mod:`coglens.lens.select` (padding removed). A vision-tower output has one entry per IMAGE (or video frame)
of the batch, not per row: its leading axis is split by the number of images/frames each row brought
(text-only rows get nothing), and a row's frames are joined into one token axis. Token types do not exist
there: a selection of ``image`` means every token, other type-based selections are refused before anything
runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from coglens.lens.inputs import LensSample
from coglens.lens.modules import ModuleSpec
from coglens.lens.records import ActivationRecord, SampleRecord
from coglens.lens.select import SelectionError, TokenSpec, select_and_pool
from coglens.lens.trace import Capture, CapturePoint, Trace, token_reducer

STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class BatchResult:
    """What one batch produced: its samples, their activations, and the activations' size in bytes."""

    samples: list[SampleRecord]
    activations: list[ActivationRecord]
    nbytes: int = 0


def record_module_name(point: CapturePoint, call: int) -> str:
    """The module name a capture is stored under: the module, ``module:path`` for an explicit capture path,
    and ``#n`` for the n-th extra call of a module that ran several times in one step."""
    name = point.module if point.path is None else f"{point.module}:{point.path.text}"
    return name if call == 0 else f"{name}#{call}"


def vision_module_ids(model: nn.Module) -> set[int]:
    """ids of the vision tower's modules, whose outputs are per image (frame) rather than per batch row."""
    tower = getattr(getattr(model, "model", None), "vision", None)
    return set() if tower is None else {id(module) for module in tower.modules()}


class BatchCapturer:
    """Capture `specs` of `model` on prepared batches: ``capturer(samples, inputs)`` -> :class:`BatchResult`.

    `tokens` / `pooling` are the defaults that a module entry's own settings override; `store_dtype` (a
    ``STORE_DTYPES`` name, or None for the model's own dtype) is applied on the device, after selection.
    """

    def __init__(
        self,
        model: nn.Module,
        specs: Sequence[ModuleSpec],
        *,
        tokenizer: Any = None,
        capture: str = "output",
        tokens: TokenSpec = TokenSpec("all"),
        pooling: str = "none",
        steps: str = "prefill",
        forward: Mapping[str, Any] | None = None,
        store_dtype: str | None = None,
        pad_token_id: int = 0,
    ) -> None:
        self.model = model
        self.specs = list(specs)
        self.tokenizer = tokenizer
        self.capture = capture
        self.pooling = pooling
        self.forward = dict(forward or {})
        self.generate = steps == "all" and "max_new_tokens" in self.forward
        self.store_dtype = None if store_dtype is None else STORE_DTYPES[store_dtype]
        self.pad_token_id = pad_token_id
        self.device = model.get_input_embeddings().weight.device
        self.token_default = tokens
        head = model.get_output_embeddings()
        # generate() computes the prefill's logits for the last position only, unless told to keep them all
        self.keep_logits = {"logits_to_keep": 0} if any(spec.module is head for spec in self.specs) else {}
        # keyed by spec, not name: one module may be captured by several entries (paths) with own settings
        vision = vision_module_ids(model)
        self.is_vision = {spec: id(spec.module) in vision for spec in self.specs}
        self.selection = {spec: self._selection(spec, tokens) for spec in self.specs}

    def _selection(self, spec: ModuleSpec, default: TokenSpec) -> TokenSpec:
        tokens = spec.entry.tokens or default
        if not self.is_vision[spec] or not tokens.needs_token_types:
            return tokens
        if tokens.kind == "image":  # every vision-tower token is an image token
            return TokenSpec("all")
        raise SelectionError(
            f"module {spec.name!r} is in the vision tower, whose outputs have no token types, so the token "
            f"selection {str(tokens)!r} cannot apply; give it its own `tokens:` (all, last, [positions], "
            "slice:START:STOP or image) in the modules list"
        )

    @torch.inference_mode()
    def __call__(
        self,
        samples: Sequence[LensSample],
        inputs: Mapping[str, Any],
        media_sha256: Sequence[str | None] = (),
    ) -> BatchResult:
        batch = self._to_device(inputs)
        reducer = self._reducer(batch, inputs["images"])
        generated = None
        with Trace(
            self.model,
            self.specs,
            capture=self.capture,
            steps="all" if self.generate else "prefill",
            reduce=reducer,
            stop=not self.generate,
        ) as trace:
            if self.generate:
                generated = self._generate(batch)
            else:  # stops as soon as every capture point has fired
                self.model(**batch, use_cache=False)
        keys = [sample.key for sample in samples]
        lengths = None if generated is None else [len(row) for row in generated]
        activations = self._activations(trace.captures, keys, lengths)
        records = self._samples(samples, inputs, media_sha256, generated)
        nbytes = sum(record.tensor.numel() * record.tensor.element_size() for record in activations)
        return BatchResult(records, activations, nbytes)

    def _to_device(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        move = {"device": self.device, "non_blocking": self.device.type == "cuda"}
        batch = {k: inputs[k].to(**move) for k in ("input_ids", "token_type_ids", "attention_mask")}
        batch["images"] = [[image.to(**move) for image in row] for row in inputs["images"]]
        return batch

    def _reducer(self, batch: Mapping[str, Any], images: Sequence[Sequence[torch.Tensor]]):
        lm = token_reducer(
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
            tokens=self.token_default,
            pooling=self.pooling,
        )
        frames = [sum(1 if image.dim() == 3 else image.shape[0] for image in row) for row in images]

        def reduce(point: CapturePoint, step: int, x: torch.Tensor) -> list[torch.Tensor | None]:
            pooling = point.spec.entry.pooling or self.pooling
            if self.is_vision[point.spec]:
                rows = _vision_rows(x, frames, self.selection[point.spec], pooling, point.module)
            else:
                rows = lm(point, step, x)
            if self.store_dtype is None:
                return list(rows)
            return [None if row is None else row.to(self.store_dtype) for row in rows]

        return reduce

    def _generate(self, batch: Mapping[str, Any]) -> list[list[int]]:
        """Generate; per row the new token ids up to and including its end of sequence."""
        options = {"pad_token_id": self.pad_token_id, **self.keep_logits, **self.forward}
        output = self.model.generate(**batch, **options)
        sequences = getattr(output, "sequences", output)
        new = sequences[:, batch["input_ids"].shape[1] :].tolist()
        eos = options.get("eos_token_id", self.model.generation_config.eos_token_id)
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        rows = []
        for tokens in new:
            end = next((i + 1 for i, token in enumerate(tokens) if token in eos_ids), len(tokens))
            rows.append(tokens[:end])
        return rows

    def _activations(
        self, captures: Sequence[Capture], keys: Sequence[str], lengths: Sequence[int] | None
    ) -> list[ActivationRecord]:
        records = []
        for capture in captures:
            pooling = capture.point.spec.entry.pooling or self.pooling
            values = capture.value if isinstance(capture.value, list) else [capture.value]
            for row, value in enumerate(values):
                # a row that ended its sequence earlier still runs in the batch: those steps are padding
                if value is None or (lengths is not None and capture.step >= lengths[row]):
                    continue
                records.append(
                    ActivationRecord(
                        sample_key=keys[row],
                        module=record_module_name(capture.point, capture.call),
                        tensor=value,
                        io=capture.point.io,
                        step=capture.step,
                        selection=str(self.selection[capture.point.spec]),
                        pooling=None if pooling == "none" else pooling,
                    )
                )
        return records

    def _samples(
        self,
        samples: Sequence[LensSample],
        inputs: Mapping[str, Any],
        media_sha256: Sequence[str | None],
        generated: Sequence[Sequence[int]] | None,
    ) -> list[SampleRecord]:
        records = []
        for row, sample in enumerate(samples):
            real = inputs["attention_mask"][row].bool()
            extra = dict(sample.extra)
            text = None
            if generated is not None:
                extra["generated_ids"] = list(generated[row])
                if self.tokenizer is not None:
                    text = self.tokenizer.decode(generated[row], skip_special_tokens=True)
            records.append(
                SampleRecord(
                    key=sample.key,
                    prompt=sample.prompt,
                    image_path=sample.image_path or sample.video,
                    image_sha256=media_sha256[row] if row < len(media_sha256) else None,
                    label=sample.label,
                    dataset_row_id=sample.row_id,
                    input_ids=inputs["input_ids"][row][real],
                    token_type_ids=inputs["token_type_ids"][row][real],
                    generated_text=text,
                    extra=extra,
                )
            )
        return records


def _vision_rows(
    x: torch.Tensor, frames: Sequence[int], tokens: TokenSpec, pooling: str, name: str
) -> list[torch.Tensor | None]:
    """Split a vision-tower output (leading axis: the batch's images/frames in row order) into batch rows."""
    if x.shape[0] != sum(frames):
        raise SelectionError(
            f"output of {name!r} has shape {tuple(x.shape)}, but the batch holds {sum(frames)} images or "
            "frames; "
            "its leading axis cannot be matched to the rows (capture this module with batch_size 1)"
        )
    rows: list[torch.Tensor | None] = []
    start = 0
    for count in frames:
        if count == 0:
            rows.append(None)
            continue
        value = x[start : start + count]
        start += count
        if value.ndim == 3:  # [frames, tokens, D] -> one row of frames * tokens positions
            value = value.flatten(0, 1).unsqueeze(0)
        elif value.ndim >= 4 and count > 1:  # conv maps: one position per row
            value = value.unsqueeze(0)
        [row] = select_and_pool(value, tokens, pooling)
        rows.append(row)
    return rows
