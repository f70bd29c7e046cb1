"""Training examples: read from JSONL/CSV manifests or a Hugging Face dataset, and encoded exactly as inference
encodes a prompt (``build_conversation_input_ids``), with the answer appended and labelled so the loss covers the
answer tokens (and the closing eos) only."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coglens.processing.conversation import build_conversation_input_ids
from coglens.processing.padding import left_padded_batch, pad_left

IGNORE_INDEX = -100  # what transformers' causal-LM loss skips


@dataclass(frozen=True)
class Example:
    """One training row: ``image`` or ``video`` (a path; or a PIL image; or a clip's (T, 3, S, S) frames), earlier
    ``history`` turns as (query, answer) pairs, the ``query`` and the ``answer`` to learn."""

    query: str
    answer: str
    image: Any = None
    video: Any = None
    history: tuple[tuple[str, str], ...] = ()


def load_examples(source: str) -> list[Example]:
    """``source``: a ``.jsonl`` or ``.csv`` manifest, or ``hf:NAME[:SPLIT]`` (split default ``train``). Rows have
    ``query`` and ``answer``, optionally ``image`` / ``video`` and ``history`` (a list of [query, answer]; in a
    CSV, that list as JSON text); ``question`` is accepted for ``query``."""
    if source.startswith("hf:"):
        import datasets

        name, _, split = source.removeprefix("hf:").partition(":")
        return [_example(dict(row), None, f"{source} row {i}")
                for i, row in enumerate(datasets.load_dataset(name, split=split or "train"))]
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"manifest {source!r} does not exist")
    if path.suffix == ".jsonl":
        lines = path.read_text().splitlines()
        rows = [(i + 1, json.loads(line)) for i, line in enumerate(lines) if line.strip()]
    elif path.suffix == ".csv":
        with path.open(newline="") as handle:
            rows = [(i + 2, row) for i, row in enumerate(csv.DictReader(handle))]
    else:
        raise ValueError(f"manifest {source!r}: use a .jsonl or .csv file, or hf:NAME[:SPLIT]")
    if not rows:
        raise ValueError(f"manifest {source!r} has no rows")
    return [_example(row, path.parent, f"{source}:{line}") for line, row in rows]


def _example(row: dict[str, Any], folder: Path | None, where: str) -> Example:
    query, answer = row.get("query", row.get("question")), row.get("answer")
    if not isinstance(query, str) or not isinstance(answer, str) or not answer:
        raise ValueError(f"{where}: needs a text query and a non-empty answer")
    history = row.get("history") or []
    if isinstance(history, str):
        history = json.loads(history)
    media = {key: _media_path(row.get(key) or None, folder) for key in ("image", "video")}
    return Example(query, answer, history=tuple((str(q), str(a)) for q, a in history), **media)


def _media_path(value: Any, folder: Path | None) -> Any:
    if isinstance(value, str) and folder is not None and not Path(value).is_absolute():
        return str(folder / value)
    return value


def encode_example(example: Example, tokenizer: Any, config: Any, template: str | None) -> dict[str, Any]:
    """The inference prompt for ``example`` followed by its answer and eos; ``labels`` are the answer and eos
    ids, :data:`IGNORE_INDEX` elsewhere. The answer is tokenized on its own, after the space the template puts
    between a cue and an answer (as in history turns), so the prompt's tokens are the ones inference sees."""
    from coglens.processing.template import resolve_template

    template = resolve_template(template, config.template_version)
    prompt = build_conversation_input_ids(
        tokenizer, config=config, query=example.query, history=example.history,
        images=media_for(example, config, template), template_version=template,
    )
    text = example.answer if template == "base" else f" {example.answer}"
    answer = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]
    n = len(prompt["input_ids"])
    answer_ids = torch.tensor(answer, dtype=torch.long)
    return {
        "input_ids": torch.cat((prompt["input_ids"], answer_ids)),
        "token_type_ids": torch.cat((prompt["token_type_ids"], torch.zeros_like(answer_ids))),
        "labels": torch.cat((torch.full((n,), IGNORE_INDEX), answer_ids)),
        "images": list(prompt["images"] or []),
    }


def media_for(example: Example, config: Any, template: str | None) -> list[Any] | None:
    """What the pipeline takes as ``images`` for ``example``: its image, its sampled video clip, or None."""
    if isinstance(example.video, torch.Tensor):  # frames sampled already
        return [example.video]
    if example.video is not None:
        from coglens.processing.video import load_video
        from coglens.processing.video.strategies import default_strategy

        clip = load_video(example.video, strategy=default_strategy(template or config.template_version),
                          image_size=config.vision_config.image_size)
        return [clip.frames]
    return None if example.image is None else [example.image]


def collate(rows: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Left-pad encoded rows into a batch (CogVLM's padding side); padded labels are ignored."""
    input_ids, token_type_ids, attention_mask = left_padded_batch(
        [row["input_ids"] for row in rows], [row["token_type_ids"] for row in rows], pad_token_id=pad_token_id,
    )
    width = input_ids.shape[1]
    labels = torch.stack([pad_left(row["labels"], width, value=IGNORE_INDEX) for row in rows])
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "labels": labels, "images": [row["images"] for row in rows]}
