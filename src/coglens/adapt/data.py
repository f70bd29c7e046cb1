"""Training examples: read from JSONL/CSV manifests or a Hugging Face dataset, and encoded exactly as inference
encodes a prompt (``build_conversation_input_ids``), with the answer appended and labelled so the loss covers the
answer tokens (and the closing eos) only, or, with ``train_on_history``, the history turns' answers too."""

from __future__ import annotations

import csv
import json
import warnings
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch

from coglens.modeling.routing import VISION_TOKEN_TYPE
from coglens.processing.conversation import build_conversation_input_ids
from coglens.processing.padding import left_padded_batch, pad_left
from coglens.processing.template import render_turn, render_turns, resolve_template

IGNORE_INDEX = -100  # what transformers' causal-LM loss skips


@dataclass(frozen=True)
class Example:
    """One training row: ``image`` or ``video`` (a path; or a PIL image; or a clip's (T, 3, S, S) frames), earlier
    ``history`` turns as (query, answer) pairs, the ``query`` and the ``answer`` to learn; ``where`` names its
    source row for error messages."""

    query: str
    answer: str
    image: Any = None
    video: Any = None
    history: tuple[tuple[str, str], ...] = ()
    where: str = field(default="", compare=False, repr=False)  # the same row read from elsewhere is equal


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
    return Example(query, answer, history=tuple((str(q), str(a)) for q, a in history), where=where, **media)


def _media_path(value: Any, folder: Path | None) -> Any:
    if isinstance(value, str) and folder is not None and not Path(value).is_absolute():
        return str(folder / value)
    return value


def encode_example(example: Example, tokenizer: Any, config: Any, template: str | None, *,
                   train_on_history: bool = False) -> dict[str, Any]:
    """The inference prompt for ``example`` followed by its answer and eos; ``labels`` are the answer and eos
    ids, :data:`IGNORE_INDEX` elsewhere. The answer is tokenized on its own, after the space the template puts
    between a cue and an answer (as in history turns), so the prompt's tokens are the ones inference sees.

    ``train_on_history``: the prompt tokens that spell each history answer (with the space before it) are
    labelled too; the newline after it is not, as answers end with eos. A token the tokenizer merges from an
    answer's end and that newline (Llama-3's ``.\\n``) stays unlabelled, with a warning."""
    template = resolve_template(template, config.template_version)
    locate = train_on_history and bool(example.history)
    if locate and template == "base":
        raise ValueError(f"{_name(example)}: train_on_history learns the answers of history turns, but the 'base' "
                         "template leaves history out of the prompt; use template chat or vqa")
    recorder = _RecordingTokenizer(tokenizer)
    prompt = build_conversation_input_ids(
        recorder, config=config, query=example.query, history=example.history,
        images=media_for(example, config, template), template_version=template,
    )
    text = example.answer if template == "base" else f" {example.answer}"
    answer = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]
    n = len(prompt["input_ids"])
    answer_ids = torch.tensor(answer, dtype=torch.long)
    prompt_labels = torch.full((n,), IGNORE_INDEX)
    if locate:
        for start, end in _history_answer_spans(example, template, tokenizer, recorder.calls, prompt):
            prompt_labels[start:end] = prompt["input_ids"][start:end]
    return {
        "input_ids": torch.cat((prompt["input_ids"], answer_ids)),
        "token_type_ids": torch.cat((prompt["token_type_ids"], torch.zeros_like(answer_ids))),
        "labels": torch.cat((prompt_labels, answer_ids)),
        "images": list(prompt["images"] or []),
    }


class _RecordingTokenizer:
    """Hands ``build_conversation_input_ids`` the tokenizer's ids and keeps each (text, ids) it encoded: the
    prompt's text pieces, in the order their ids enter the row."""

    def __init__(self, tokenizer: Any) -> None:
        self.bos_token_id = tokenizer.bos_token_id
        self._tokenizer = tokenizer
        self.calls: list[tuple[str, list[int]]] = []

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))
        self.calls.append((text, ids))
        return ids


def _history_answer_spans(example: Example, template: str, tokenizer: Any, calls: list[tuple[str, list[int]]],
                          prompt: dict[str, Any]) -> list[tuple[int, int]]:
    """The [start, end) row positions of the tokens that spell each history answer. A text piece's tokens up to
    a character are found by encoding the piece up to there: as far as those ids agree with the piece's own, the
    row's tokens spell that text and nothing past it."""
    row, types = prompt["input_ids"].tolist(), prompt["token_type_ids"].tolist()
    rows, position = [], 1  # where each piece's ids sit: after bos, in order, past the image spans between them
    for _, ids in calls:
        while position < len(types) and types[position] == VISION_TOKEN_TYPE:
            position += 1
        if row[position:position + len(ids)] != ids:
            raise RuntimeError("build_conversation_input_ids no longer lays text pieces out in order between image "
                               "spans; train_on_history needs updating")
        rows.append(position)
        position += len(ids)
    ends = list(accumulate(len(text) for text, _ in calls))  # each piece's end in the prompt text
    turns = render_turns(template, example.query, list(example.history))
    if not "".join(text for text, _ in calls).endswith("".join(turns)):
        raise RuntimeError("the prompt text no longer ends with the rendered turns; train_on_history needs updating")
    offset = ends[-1] - len("".join(turns))  # where the turns begin (video: after the frame numbers)
    spans = []
    for index, (query, answer) in enumerate(example.history):
        cue = len(render_turn(template, query))
        if not turns[index][cue:].startswith(f" {answer}"):
            raise RuntimeError(f"template {template!r} no longer puts a history answer after its cue and a space")
        begin, end = offset + cue, offset + cue + 1 + len(answer)  # the space goes with the answer's first word
        offset += len(turns[index])
        piece = bisect_left(ends, end)  # a turn's text is encoded in one piece
        text, ids = calls[piece]
        before = ends[piece] - len(text)
        lead = tokenizer.encode(text[:begin - before], add_special_tokens=False)
        if ids[:len(lead)] != lead:
            raise ValueError(f"{_name(example)}: the tokenizer merges the start of history answer {index} "
                             f"({answer!r:.40}) with the prompt text before it, so its tokens cannot be told apart; "
                             "set train_on_history: false or reword that turn")
        spelled = tokenizer.encode(text[:end - before], add_special_tokens=False)
        agreed = _common_prefix(spelled, ids)
        if agreed < len(spelled):
            warnings.warn("a history answer ends inside a token that also spells the newline after it (Llama-3 "
                          "writes '.\\n' as one token); that token stays unlabelled, so that the model does not learn "
                          "to end answers with a newline", stacklevel=3)
        spans.append((rows[piece] + len(lead), rows[piece] + max(agreed, len(lead))))
    return spans


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _name(example: Example) -> str:
    return example.where or f"the example with query {example.query!r:.60}"


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
