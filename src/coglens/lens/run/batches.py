"""Samples -> model-ready batches, prepared in background threads while the model runs the previous batch.

Each row is built on its own (image or video decoded, prompt laid out as THUDM's
``build_conversation_input_ids`` does) so that one unreadable image fails only its sample: it is reported as a
:class:`SampleFailure`, never silently dropped. The rows that worked are left-padded into one batch by
:meth:`CogvlmProcessor.collate`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from coglens.lens.run.inputs import LensInputError, LensSample
from coglens.processing import CogvlmProcessor, load_image
from coglens.processing.conversation import build_conversation_input_ids
from coglens.processing.errors import ProcessingError
from coglens.processing.template import resolve_template
from coglens.processing.video import VideoInputError, default_strategy, load_video

if TYPE_CHECKING:
    from coglens.modeling.configuration_cogvlm import CogvlmConfig

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class SampleFailure:
    """A sample that could not be prepared (unreadable image, too-long prompt...): skipped and reported."""

    key: str
    source: str
    reason: str


@dataclass
class PreparedBatch:
    """The rows that could be prepared, as one left-padded batch, and the samples that could not."""

    samples: list[LensSample]
    inputs: dict[str, Any] | None  # input_ids / token_type_ids / attention_mask [B, L], images per row
    media_sha256: list[str | None]
    failures: list[SampleFailure]


def check_media(samples: Sequence[LensSample], config: CogvlmConfig) -> None:
    """Fail before anything runs when the inputs do not fit the model (videos for an image model...)."""
    is_video_model = config.is_video
    wrong = [
        s
        for s in samples
        if (s.video is not None and not is_video_model) or (s.image is not None and is_video_model)
    ]
    if wrong:
        first = wrong[0]
        need = "a `video` column (it is a CogVLM2-Video model)" if is_video_model else "images, not videos"
        raise LensInputError(
            f"{len(wrong)} samples do not fit the {config.variant} model, e.g. {first.key!r} ({first.source}): "
            f"it takes {need}"
        )


class BatchPreparer:
    """Build one :class:`PreparedBatch` from samples; safe to call from several threads at once."""

    def __init__(
        self, processor: CogvlmProcessor, *, template_version: str | None = None, pin_memory: bool = False
    ) -> None:
        self.processor = processor
        self.config = processor.config
        self.template_version = resolve_template(template_version, self.config.template_version)
        self.pin_memory = pin_memory

    def __call__(self, samples: Sequence[LensSample]) -> PreparedBatch:
        rows, kept, hashes, failures = [], [], [], []
        for sample in samples:
            try:
                media, digest = self._media(sample)
                row = build_conversation_input_ids(
                    self.processor.tokenizer,
                    config=self.config,
                    query=sample.prompt,
                    images=media,
                    template_version=self.template_version,
                )
            except (ProcessingError, VideoInputError, OSError) as error:  # OSError: the file itself unreadable
                failures.append(SampleFailure(sample.key, sample.source, _reason(error)))
                continue
            rows.append(row)
            kept.append(sample)
            hashes.append(digest)
        inputs = dict(self.processor.collate(rows)) if rows else None
        if inputs is not None and self.pin_memory:
            inputs = _pinned(inputs)
        return PreparedBatch(kept, inputs, hashes, failures)

    def _media(self, sample: LensSample) -> tuple[list[Any] | None, str | None]:
        """The sample's decoded image or video clip (as build_conversation_input_ids takes it), its hash."""
        if sample.video is not None:
            clip = load_video(
                sample.video,
                strategy=default_strategy(self.template_version),
                image_size=self.config.vision_config.image_size,
            )
            return [clip.frames], _file_sha256(sample.video)
        if sample.image is None:
            return None, None
        source = sample.image() if callable(sample.image) else sample.image
        image = load_image(source)
        if isinstance(source, (str, Path)):
            return [image], _file_sha256(source)
        if isinstance(source, bytes):
            return [image], hashlib.sha256(source).hexdigest()
        return [image], None


def _reason(error: Exception) -> str:
    """Why a sample failed, in words: an OSError of Pillow or the file system says what and where."""
    if isinstance(error, OSError):
        detail = error.strerror or str(error) or type(error).__name__
        return f"cannot read it ({detail}); check or replace the file"
    return str(error)


def _file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _pinned(inputs: dict[str, Any]) -> dict[str, Any]:
    """Page-locked copies, so the host-to-GPU copies of the next batch can run asynchronously."""
    pinned = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    pinned["images"] = [[image.pin_memory() for image in row] for row in inputs["images"]]
    return pinned


def prefetch(
    batches: Iterable[Sequence[LensSample]],
    prepare: Callable[[Sequence[LensSample]], PreparedBatch],
    *,
    workers: int = 2,
) -> Iterator[PreparedBatch]:
    """`prepare` each batch in a thread pool, keeping `workers` + 1 batches in flight, yielded in order."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="coglens-prepare")
    pending: deque[Future[PreparedBatch]] = deque()
    iterator = iter(batches)
    try:
        for batch in iterator:
            pending.append(pool.submit(prepare, batch))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
