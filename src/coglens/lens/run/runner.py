"""The lens job: a config's inputs through the model, the chosen modules' activations into a database.

``run_lens(load_lens_config("configs/demo.yaml"))`` does what ``coglens extract --config configs/demo.yaml``
does. In order, so that mistakes surface before anything slow: the inputs are listed (missing folders,
malformed manifests, duplicate keys fail here), the model is loaded, the module patterns are resolved (a
pattern that matches nothing fails here, with the closest names), the inputs are checked against the model,
then the run is created or resumed in the database.

Resume: samples are written in batched transactions, a sample together with all its activations, so the
samples a database holds are exactly the complete ones; a rerun of the same config skips them. The store
refuses to resume a run with another model or other capture settings (:mod:`coglens.lens.store.resume`).
``overwrite`` starts the run over; ``run_name`` keeps several runs in one database. A run stopped by SIGINT or
SIGTERM is marked ``interrupted``, one stopped by a failed write (disk full...) ``failed``; both raise
:class:`RunStoppedError` saying what is stored and how to resume. On SQLite, one process at a time writes a run
(:mod:`coglens.lens.store.lock`).

Throughput: batches are prepared (images decoded, prompts built) by a thread pool ahead of the model, and
written by a writer thread while the next batch runs. Under ``torchrun`` each rank extracts its share (see
:mod:`coglens.lens.run.ranks`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from coglens.lens.capture.batch import BatchCapturer
from coglens.lens.capture.modules import resolve_modules
from coglens.lens.intervene.context import Intervene
from coglens.lens.run.batches import BatchPreparer, SampleFailure, check_media, prefetch
from coglens.lens.run.config import LensConfig, LensConfigError
from coglens.lens.run.inputs import LensSample, collect_samples
from coglens.lens.run.interventions import build_edits, check_targets, needs_stored_values
from coglens.lens.run.progress import LensSummary, Progress
from coglens.lens.run.ranks import ProcessGroup, Ranks, is_shared_database, shard_path
from coglens.lens.store.connection import database_url, describe, without_password, write_failure
from coglens.lens.store.errors import LensStoreError, LensWriteError, RunStoppedError
from coglens.lens.store.formats import MODEL_STORE_DTYPE, open_writer
from coglens.lens.store.lock import run_lock
from coglens.lens.store.sink import BackgroundWriter, WrittenTotals
from coglens.lens.store.writer import LensWriter
from coglens.modeling.dtypes import AUTO_DTYPE
from coglens.pipeline import Pipeline
from coglens.processing import CogvlmProcessor

logger = logging.getLogger(__name__)

DEFAULT_RUN_NAME = "lens"
_SIGINT_EXIT, _SIGTERM_EXIT = 128 + signal.SIGINT, 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so that a run stops the same way."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (in the main thread; elsewhere signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(*_: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def load_pipeline(config: LensConfig, ranks: Ranks | None = None) -> Pipeline:
    """The config's model and tokenizer, on the config's device (under torchrun: the rank's own GPU)."""
    ranks = ranks or Ranks()
    dtype = None if config.dtype == AUTO_DTYPE else config.dtype
    quantized = {"quantize": config.quantize, "quantize_vision": config.quantize_vision, "adapter": config.adapter}
    if config.device == "auto":
        if ranks.distributed:
            raise LensConfigError(
                "device: auto spreads one model over every GPU; under torchrun use device: cuda (each rank "
                "takes the GPU of its LOCAL_RANK)"
            )
        return Pipeline.load(
            config.model_path, tokenizer=config.model.tokenizer_path, dtype=dtype, device_map="auto", **quantized
        )
    return Pipeline.load(
        config.model_path,
        tokenizer=config.model.tokenizer_path,
        dtype=dtype,
        device=config.device,
        cuda_index=ranks.local_rank if ranks.distributed else None,
        **quantized,
    )


def run_lens(
    config: LensConfig,
    *,
    pipeline: Pipeline | None = None,
    default_run_name: str = DEFAULT_RUN_NAME,
    show_progress: bool = True,
    ranks: Ranks | None = None,
) -> LensSummary:
    """Extract the config's activations; returns the run's summary (on rank 0 of a torchrun job: every
    rank's combined). `pipeline` reuses a loaded model instead of loading ``config.model_path``."""
    if config.log_named_modules:
        raise LensConfigError(
            "log_named_modules: true asks for the module list, not an extraction: run `coglens extract` with "
            "this config, or call coglens.lens.run.discovery.write_module_log"
        )
    ranks = ranks or Ranks.from_env()
    with _sigterm_raises(), ProcessGroup(ranks) as group:
        if config.interventions:  # the same inputs without them first, so that every sample has both
            if ranks.distributed and needs_stored_values(config.interventions) and not is_shared_database(
                    config.output):
                raise LensConfigError("interventions that read the clean run (mean, resample, mean_difference, "
                                      "sample) need one database every rank reads: under torchrun use a "
                                      "PostgreSQL output, or run without torchrun")
            clean_run = config.clean_run or f"{config.run_name or default_run_name}.clean"
            pipeline = pipeline or load_pipeline(config, ranks)
            check_targets(config.interventions, pipeline.model)
            clean = dataclasses.replace(config, interventions=(), clean_run=None, run_name=clean_run)
            _LensRun(clean, ranks, group, default_run_name, show_progress).execute(pipeline)
            config = dataclasses.replace(config, clean_run=clean_run)
        return _LensRun(config, ranks, group, default_run_name, show_progress).execute(pipeline)


@dataclass
class _Outcome:
    written: WrittenTotals
    failures: list[SampleFailure]
    seconds: float


class _LensRun:
    """One `run_lens` call on one rank, in the order the module docstring gives."""

    def __init__(
        self,
        config: LensConfig,
        ranks: Ranks,
        group: ProcessGroup,
        default_run_name: str,
        show_progress: bool,
    ) -> None:
        self.config = config
        self.ranks = ranks
        self.group = group
        self.run_name = config.run_name or default_run_name
        self.show_progress = show_progress and ranks.is_main
        self.shared = is_shared_database(config.output)

    def execute(self, pipeline: Pipeline | None) -> LensSummary:
        config = self.config
        samples = collect_samples(config)
        target = shard_path(config.output, self.ranks)
        # a second process on the same SQLite run is refused before its model loads
        with contextlib.nullcontext() if self.shared else run_lock(target, self.run_name):
            return self._execute(pipeline, samples, target)

    def _execute(self, pipeline: Pipeline | None, samples: list[LensSample], target: str) -> LensSummary:
        config = self.config
        started = time.perf_counter()
        pipe = pipeline or load_pipeline(config, self.ranks)
        load_seconds = time.perf_counter() - started
        model = pipe.model
        specs = resolve_modules(model, config.modules)
        check_media(samples, model.config)
        if config.architecture is not None and config.architecture != model.config.variant:
            logger.warning(
                "architecture: %s in the config, but %s is a %s checkpoint; extracting it as %s",
                config.architecture,
                pipe.model_path,
                model.config.variant,
                model.config.variant,
            )
        processor = CogvlmProcessor(pipe.tokenizer, model.config)
        capturer = BatchCapturer(
            model,
            specs,
            tokenizer=pipe.tokenizer,
            capture=config.capture,
            tokens=config.tokens,
            pooling=config.pooling,
            steps=config.steps,
            forward=config.forward,
            store_dtype=None if config.store_dtype == MODEL_STORE_DTYPE else config.store_dtype,
        )
        self._explain_forward(capturer)
        settings = self._settings(pipe)
        mine = self.ranks.share(samples)
        # values read from the clean run or computed now: before this run is opened, so a bad one leaves nothing
        edits = build_edits(config.interventions, pipe, output=config.output, clean_run=config.clean_run or "",
                            template=config.model.template_version)
        writer = open_writer(target, config.output_format)
        try:
            try:
                run_id = self._start_run(writer, pipe, settings)
                done = writer.completed_sample_keys(run_id)
            except SQLAlchemyError as error:  # locked for too long, disk full, connection lost
                raise write_failure(writer.name, error) from None
            todo = [sample for sample in mine if sample.key not in done]
            with Intervene(model, edits) as intervened:
                outcome = self._extract_marking_status(writer, run_id, todo, processor, capturer, len(mine))
            if edits:
                logger.info("%s: interventions applied (positions changed): %s", self.run_name,
                            ", ".join(f"{r['kind']} {r.get('module', '')} {r['applied']}" for r in intervened.records))
        finally:
            writer.close()
        summary = LensSummary(
            run_name=self.run_name,
            output=describe(database_url(target)) if self.shared else target,  # no password shown
            output_format=config.output_format,
            samples_total=len(mine),
            samples_written=outcome.written.samples,
            samples_resumed=len(mine) - len(todo),
            failures=outcome.failures,
            rows=outcome.written.rows,
            nbytes=outcome.written.nbytes,
            seconds=outcome.seconds,
            load_seconds=load_seconds,
            modules=sorted({spec.name for spec in specs}),
            shards=[target] if target != config.output else [],
        )
        parts = self.group.gather(summary)
        return LensSummary.combine(parts) if self.ranks.is_main else summary

    def _explain_forward(self, capturer: BatchCapturer) -> None:
        forward = self.config.forward
        if "max_new_tokens" in forward and not capturer.generate:
            logger.warning(
                "forward.max_new_tokens=%s is not used with steps: prefill: each batch runs one forward pass "
                "over the prompt; set steps: all to generate and capture every step",
                forward["max_new_tokens"],
            )
        elif self.config.steps == "all" and not capturer.generate:
            logger.warning(
                "steps: all without forward.max_new_tokens captures the prompt's forward pass only"
            )

    def _settings(self, pipe: Pipeline) -> dict[str, Any]:
        """The config as stored with the run: every setting, plus the dtype the model actually ran in."""
        settings = self.config.to_dict()
        settings["output"] = without_password(self.config.output)  # credentials are never stored
        settings["model_dtype"] = str(pipe.dtype).removeprefix("torch.")
        return settings

    def _start_run(self, writer: LensWriter, pipe: Pipeline, settings: Mapping[str, Any]) -> int:
        """Create or resume the run. On a database shared by all ranks, rank 0 goes first, so that an
        overwrite cannot delete rows another rank has just written."""
        first = not self.shared or self.ranks.is_main
        run_id = self._open_run(writer, pipe, settings, overwrite=self.config.overwrite) if first else None
        self.group.barrier()
        if run_id is None:
            run_id = self._open_run(writer, pipe, settings, overwrite=False)
        return run_id

    def _open_run(
        self, writer: LensWriter, pipe: Pipeline, settings: Mapping[str, Any], *, overwrite: bool
    ) -> int:
        return writer.start_run(
            self.run_name,
            json.dumps(settings, sort_keys=True, default=str),
            model_path=self.config.model_path,
            model_config_hash=_config_hash(pipe.model_path),
            architecture=pipe.model.config.variant,
            overwrite=overwrite,
        )

    def _extract_marking_status(
        self,
        writer: LensWriter,
        run_id: int,
        todo: Sequence[LensSample],
        processor: CogvlmProcessor,
        capturer: BatchCapturer,
        total: int,
    ) -> _Outcome:
        try:
            outcome = self._extract(writer, run_id, todo, processor, capturer)
        except KeyboardInterrupt as interrupt:
            with contextlib.suppress(LensStoreError, SQLAlchemyError):
                writer.mark_interrupted(run_id)
            terminated = isinstance(interrupt, Terminated)
            raise RunStoppedError(
                f"interrupted by {'SIGTERM' if terminated else 'SIGINT (Ctrl-C)'}: {self._kept(writer, run_id, total)}",
                exit_code=_SIGTERM_EXIT if terminated else _SIGINT_EXIT,
            ) from None
        except LensWriteError as error:
            with contextlib.suppress(LensStoreError, SQLAlchemyError):
                writer.mark_failed(run_id, str(error))
            hint = "free some space, then " if error.full else ""
            raise RunStoppedError(f"{error}. {self._kept(writer, run_id, total, hint)}") from None
        except BaseException as error:
            with contextlib.suppress(LensStoreError, SQLAlchemyError):  # the original error matters more
                writer.mark_failed(run_id, f"{type(error).__name__}: {error}")
            raise
        self.group.barrier()  # a shared run is finished when every rank is
        if not self.shared or self.ranks.is_main:
            writer.mark_finished(run_id)
        return outcome

    def _kept(self, writer: LensWriter, run_id: int, total: int, hint: str = "") -> str:
        """What a stopped run leaves behind, and how to go on."""
        try:
            stored = f"{len(writer.completed_sample_keys(run_id))} of {total} samples"
        except (LensStoreError, SQLAlchemyError):
            stored = "the samples written so far"
        return (
            f"{stored} of run {self.run_name!r} are stored in {writer.name}, each complete; "
            f"{hint}rerun the same command to resume"
        )

    def _extract(
        self,
        writer: LensWriter,
        run_id: int,
        todo: Sequence[LensSample],
        processor: CogvlmProcessor,
        capturer: BatchCapturer,
    ) -> _Outcome:
        size = self.config.batch_size
        batches = [todo[i : i + size] for i in range(0, len(todo), size)]
        preparer = BatchPreparer(
            processor,
            template_version=self.config.model.template_version,
            pin_memory=capturer.device.type == "cuda",
        )
        failures: list[SampleFailure] = []
        started = time.perf_counter()
        with (
            Progress(len(todo), disable=not self.show_progress) as progress,
            BackgroundWriter(writer, run_id) as sink,
            contextlib.closing(prefetch(batches, preparer)) as prepared_batches,
        ):
            for index, prepared in enumerate(prepared_batches):
                for failure in prepared.failures:
                    progress.note(f"skipped {failure.key} ({failure.source}): {failure.reason}")
                failures.extend(prepared.failures)
                rows = 0
                if prepared.inputs is not None:
                    batch_started = time.perf_counter()
                    result = capturer(prepared.samples, prepared.inputs, prepared.media_sha256)
                    rows = len(result.activations)
                    logger.debug(
                        "batch %d: %d samples, %d activations (%d bytes) in %.3f s",
                        index,
                        len(result.samples),
                        rows,
                        result.nbytes,
                        time.perf_counter() - batch_started,
                    )
                    sink.put(result)
                progress.advance(len(prepared.samples) + len(prepared.failures), rows)
        return _Outcome(sink.written, failures, time.perf_counter() - started)


def _config_hash(model_path: Path) -> str | None:
    """Identifies the checkpoint's architecture: the sha256 of its config.json."""
    config_file = Path(model_path) / "config.json"
    return hashlib.sha256(config_file.read_bytes()).hexdigest() if config_file.is_file() else None
