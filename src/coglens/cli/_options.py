"""Options shared by several commands, defined once, and the checks that need no model.

This module is imported to build the ``coglens`` command, so ``coglens --help`` loads it: it must stay light
(typer, click, the standard library, and the light coglens modules that hold the names users choose from:
``coglens.processing.template``, ``coglens.processing.video.strategies``, ``coglens.modeling.dtypes``,
``coglens.modeling.quantization``, ``coglens.modeling.adapters``, ``coglens.tiny.variants``; never
torch, transformers or the modules that import them). The checks below run first thing in a command, so a bad
option fails in milliseconds, not after the model loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from coglens.modeling.adapters import check_adapter_folder
from coglens.modeling.dtypes import AUTO_DTYPE, FLOAT_DTYPES, dtype_name
from coglens.modeling.quantization import SCHEMES
from coglens.processing.template import TemplateVersion
from coglens.processing.video.strategies import DEFAULT_NUM_FRAMES, DEFAULT_WINDOW_S, SamplingStrategy
from coglens.tiny.variants import DEFAULT_TINY_MODEL, TINY_PREFIX


def _check_top_p(value: float) -> float:
    if not 0 < value <= 1:
        raise typer.BadParameter(f"{value} is not in (0, 1]")
    return value


def _check_scheme(value: str | None) -> str | None:
    if value is not None and value not in SCHEMES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(SCHEMES)}")
    return value


ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", envvar="COGLENS_MODEL",
                 help=f"Checkpoint folder (THUDM layout) or {TINY_PREFIX}VARIANT. Default: the built-in "
                 f"{DEFAULT_TINY_MODEL}."),
]
TokenizerOpt = Annotated[
    str | None, typer.Option("--tokenizer", help="Tokenizer folder, if the checkpoint ships none (CogVLM-1).")
]
TemplateOpt = Annotated[
    TemplateVersion | None, typer.Option("--template", help="Prompt template (default: the checkpoint's).")
]
DtypeOpt = Annotated[
    str | None,
    typer.Option("--dtype", help=f"{' | '.join(FLOAT_DTYPES)} (default: bf16 on CUDA, else fp32)."),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", envvar="COGLENS_DEVICE", help="cpu | cuda | cuda:N | mps | auto.")
]
QuantizeOpt = Annotated[
    str | None,
    typer.Option("--quantize", metavar="[" + "|".join(SCHEMES) + "]", callback=_check_scheme,
                 help="Quantize the weights while loading: int8 (1 byte a weight), int4, nf4 or fp4 (about half a "
                 "byte; int4 needs CUDA). The vision tower, its adapter and lm_head stay in full precision unless "
                 "--quantize-vision. A checkpoint saved quantized loads as saved, without this option."),
]
QuantizeVisionOpt = Annotated[
    bool, typer.Option("--quantize-vision", help="With --quantize: quantize the vision tower, the GLU adapter and "
                       "lm_head too (less memory, more quality loss).")
]
AdapterOpt = Annotated[
    Path | None,
    typer.Option("--adapter", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors, e.g. a "
                 "LoRA) to merge into the model's weights as it loads. Not with --quantize: merge it first with "
                 "`coglens merge-adapter`."),
]
CompileOpt = Annotated[
    bool,
    typer.Option("--compile/--no-compile",
                 help="Compile the decode step with torch.compile (CPU: needs a C++ compiler; CUDA: CUDA graphs). "
                 "Faster decoding after a warm-up that compiles (seconds to minutes)."),
]
ImageOpt = Annotated[Path | None, typer.Option("--image", "-i", help="Image file to ask about.")]
VideoOpt = Annotated[Path | None, typer.Option("--video", help="Video file to ask about (CogVLM2-Video).")]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Most tokens to generate.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy.")]
TopPOpt = Annotated[float, typer.Option("--top-p", callback=_check_top_p, help="Nucleus sampling, in (0, 1].")]
TopKOpt = Annotated[int, typer.Option("--top-k", min=0, help="0 = off.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed for sampling (reproducible answers).")]
BoxesOutOpt = Annotated[
    Path | None, typer.Option("--boxes-out", help="Save the image with the answer's grounding boxes drawn.")
]
VideoStrategyOpt = Annotated[
    SamplingStrategy | None,
    typer.Option("--video-strategy", help=f"chat: the frame nearest each second (first {DEFAULT_NUM_FRAMES} s); "
                 f"base: {DEFAULT_NUM_FRAMES} frames over the first {DEFAULT_WINDOW_S:g} s. Default: base for the "
                 "base template, else chat."),
]
NumFramesOpt = Annotated[
    int, typer.Option("--num-frames", min=1, help="Frames to sample (each costs 66 tokens on the real model).")
]


# Checks that need no model. They raise ValueError, which ``coglens`` prints as one ``error: ...`` line (exit 1).


def check_dtype(dtype: str | None) -> None:
    if dtype not in (None, AUTO_DTYPE):
        dtype_name(dtype)  # the names the model loader takes (it raises for others)


def check_quantize(quantize: str | None, quantize_vision: bool) -> None:
    """``--quantize-vision`` alone would silently do nothing: say which option it needs."""
    if quantize_vision and quantize is None:
        raise ValueError(f"--quantize-vision needs --quantize {{{','.join(SCHEMES)}}}")


def check_adapter(adapter: Path | None, quantize: str | None) -> None:
    """``--adapter`` is a PEFT adapter folder, and not combined with ``--quantize`` (it would be rounded away)."""
    if adapter is None:
        return
    if quantize is not None:
        raise ValueError("--adapter cannot be merged into --quantize weights: run `coglens merge-adapter BASE "
                         "ADAPTER OUT` first, then --model OUT --quantize")
    check_adapter_folder(adapter)


def check_media_options(image: Path | None, video: Path | None, boxes_out: Path | None, dtype: str | None) -> None:
    """The file and dtype options of ``ask`` and ``chat``: media that exist, a boxes image that can be written."""
    check_input_file(image, "--image")
    check_input_file(video, "--video")
    check_output_file(boxes_out, "--boxes-out")
    check_image_suffix(boxes_out, "--boxes-out")
    check_dtype(dtype)


def check_input_file(path: Path | None, option: str) -> None:
    """``path`` (if given) is an existing file."""
    if path is None:
        return
    if not path.exists():
        raise ValueError(f"{option} {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{option} {str(path)!r} is a directory, not a file")


def check_input_dir(path: str | Path | None, option: str) -> None:
    """``path`` (if given) is an existing folder."""
    if path is None:
        return
    if not Path(path).is_dir():
        what = "is a file, not a folder" if Path(path).exists() else "does not exist"
        raise ValueError(f"{option} {str(path)!r} {what}")


def check_output_file(path: Path | None, option: str) -> None:
    """``path`` (if given) can be written: not a folder, and its nearest existing folder is writable (the
    commands create missing folders)."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a directory; give a file path")
    check_output_dir(path.parent, option, of=path)


def check_output_dir(folder: Path, option: str, *, of: Path | None = None) -> None:
    """``folder`` exists and is writable, or can be created (its nearest existing ancestor is a writable folder)."""
    shown = str(of if of is not None else folder)
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {shown!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {shown!r}: no permission to write in {str(existing)!r}")


def check_image_suffix(path: Path | None, option: str) -> None:
    """``path`` (if given) ends with an image format Pillow can write (Pillow is light next to the model)."""
    if path is None:
        return
    from PIL import Image

    extensions = Image.registered_extensions()
    if extensions.get(path.suffix.lower()) not in Image.SAVE:
        raise ValueError(f"{option} {str(path)!r}: give an image file name Pillow can write, e.g. boxes.png")
