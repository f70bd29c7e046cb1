"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", envvar="COGLENS_MODEL",
                 help="Checkpoint folder (THUDM layout) or tiny:VARIANT. Default: the built-in tiny CogVLM2."),
]
TokenizerOpt = Annotated[
    str | None, typer.Option("--tokenizer", help="Tokenizer folder, if the checkpoint ships none (CogVLM-1).")
]
TemplateOpt = Annotated[
    str | None, typer.Option("--template", help="Prompt template: chat | vqa | base (default: the checkpoint's).")
]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help="float32 | bfloat16 | float16 (default: bf16 on CUDA, else fp32).")
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", envvar="COGLENS_DEVICE", help="cpu | cuda | cuda:N | mps | auto.")
]
ImageOpt = Annotated[Path | None, typer.Option("--image", "-i", help="Image file to ask about.")]
VideoOpt = Annotated[Path | None, typer.Option("--video", help="Video file to ask about (CogVLM2-Video).")]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", help="0 = greedy.")]
TopPOpt = Annotated[float, typer.Option("--top-p")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="0 = off.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed for sampling (reproducible answers).")]
BoxesOutOpt = Annotated[
    Path | None, typer.Option("--boxes-out", help="Save the image with the answer's grounding boxes drawn.")
]
VideoStrategyOpt = Annotated[
    str | None,
    typer.Option("--video-strategy", help="chat: the frame nearest each second (first 24 s); base: 24 frames over "
                 "the first 60 s. Default: base for the base template, else chat."),
]
NumFramesOpt = Annotated[
    int, typer.Option("--num-frames", help="Frames to sample (each costs 66 tokens on the real model).")
]
