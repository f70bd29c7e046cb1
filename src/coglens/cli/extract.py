"""``coglens extract --config FILE.yaml``: run the lens over a config's inputs and store the activations.

Every option overrides the config only when given (VLM-Lens's ``--device`` always overrode the YAML). The
options read no environment variables, for the same reason. ``python -m coglens.lens`` runs this command too
(what ``torchrun`` starts on each rank).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from coglens.lens.capture.choices import CAPTURE_CHOICES, POOLING_CHOICES, STEP_CHOICES, TOKEN_CHOICES
from coglens.lens.store.formats import OUTPUT_FORMATS, STORE_DTYPES
from coglens.modeling.dtypes import DTYPE_CHOICES
from coglens.tiny.variants import TINY_PREFIX

from ._errors import lens_errors_exit
from ._options import QuantizeOpt, QuantizeVisionOpt, check_input_dir, check_input_file, check_output_file

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", exists=True, dir_okay=False, readable=True,
                 help="Lens config (YAML; VLM-Lens configs are accepted as is)."),
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help=f"Checkpoint folder or {TINY_PREFIX}VARIANT (the config's model_path)."),
]
OutputOpt = Annotated[
    str | None,
    typer.Option("--output", "-o", help="SQLite file or postgresql+psycopg:// URL (output / output_db)."),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="cpu | cuda | cuda:N | mps | auto (all GPUs).")
]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help=f"Model dtype: {' | '.join(DTYPE_CHOICES)}.")
]
StoreDtypeOpt = Annotated[
    str | None, typer.Option("--store-dtype", help=f"Stored dtype: {' | '.join(STORE_DTYPES)}.")
]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", help="Samples per forward pass.")]
RunNameOpt = Annotated[
    str | None, typer.Option("--run-name", help="Run to write (default: the config file's name); resumes it.")
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Delete the run's stored rows and start over.")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Log every batch (debug logging).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
ModuleOpt = Annotated[
    list[str] | None, typer.Option("--module", "-M", help="Module pattern to capture; repeat for several.")
]
TokensOpt = Annotated[str | None, typer.Option("--tokens", help=TOKEN_CHOICES.replace("[", r"\["))]  # not markup
PoolingOpt = Annotated[str | None, typer.Option("--pooling", help=f"{' | '.join(POOLING_CHOICES)}.")]
StepsOpt = Annotated[str | None, typer.Option("--steps", help=f"{' | '.join(STEP_CHOICES)} (every generation step).")]
CaptureOpt = Annotated[str | None, typer.Option("--capture", help=f"{' | '.join(CAPTURE_CHOICES)}.")]
FormatOpt = Annotated[str | None, typer.Option("--output-format", help=f"{' | '.join(OUTPUT_FORMATS)}.")]
PromptOpt = Annotated[str | None, typer.Option("--prompt", help="Prompt for every input_dir image.")]
InputDirOpt = Annotated[
    str | None, typer.Option("--input-dir", help="Folder of images (replaces the config's input).")
]
ManifestOpt = Annotated[
    str | None,
    typer.Option("--manifest", help="JSONL/CSV of image, prompt, label, id (replaces the config's input)."),
]


def extract(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    output: OutputOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantizeOpt = None,
    quantize_vision: QuantizeVisionOpt = False,
    store_dtype: StoreDtypeOpt = None,
    batch_size: BatchSizeOpt = None,
    run_name: RunNameOpt = None,
    overwrite: OverwriteOpt = False,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
    module: ModuleOpt = None,
    tokens: TokensOpt = None,
    pooling: PoolingOpt = None,
    steps: StepsOpt = None,
    capture: CaptureOpt = None,
    output_format: FormatOpt = None,
    prompt: PromptOpt = None,
    input_dir: InputDirOpt = None,
    manifest: ManifestOpt = None,
) -> None:
    """Capture module activations over the config's inputs into a database (resumes an interrupted run)."""
    # What can be checked before coglens.lens (torch) loads; load_lens_config checks the rest, before the model.
    check_input_dir(input_dir, "--input-dir")
    check_input_file(None if manifest is None else Path(manifest), "--manifest")
    if output is not None and "://" not in output:
        check_output_file(Path(output), "--output")

    from rich.console import Console

    from coglens.lens.run.config import load_lens_config
    from coglens.lens.run.discovery import write_module_log
    from coglens.lens.run.progress import print_summary
    from coglens.lens.run.ranks import Ranks
    from coglens.lens.run.runner import DEFAULT_RUN_NAME, load_pipeline, run_lens

    overrides = {
        "model": model,
        "output": output,
        "device": device,
        "dtype": dtype,
        "quantize": quantize,
        "quantize_vision": quantize_vision or None,
        "store_dtype": store_dtype,
        "batch_size": batch_size,
        "run_name": run_name,
        "overwrite": overwrite or None,
        "debug": debug or None,
        "modules": module or None,
        "tokens": tokens,
        "pooling": pooling,
        "steps": steps,
        "capture": capture,
        "output_format": output_format,
        "prompt": prompt,
        "input_dir": input_dir,
        "manifest": manifest,
    }
    lens_config = load_lens_config(config, overrides)
    if lens_config.debug:
        logging.getLogger("coglens").setLevel(logging.DEBUG)
    if lens_config.log_named_modules:
        path = write_module_log(load_pipeline(lens_config).model, lens_config.model_path)
        typer.echo(f"wrote the module names of {lens_config.model_path} to {path}")
        return
    with lens_errors_exit():
        summary = run_lens(
            lens_config,
            default_run_name=config.stem if config is not None else DEFAULT_RUN_NAME,
            show_progress=not quiet,
        )
    if Ranks.from_env().is_main:  # rank 0 prints the summary of every rank
        print_summary(summary, Console(soft_wrap=True))
