"""``coglens ask``: one question about an image (or video, or nothing), answer streamed to the terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from coglens.chat.text import check_decoded
from coglens.processing.video.strategies import DEFAULT_NUM_FRAMES

from ._options import (
    AdapterOpt,
    BoxesOutOpt,
    CompileOpt,
    DeviceOpt,
    DtypeOpt,
    ImageOpt,
    MaxNewTokensOpt,
    ModelOpt,
    NumFramesOpt,
    QuantizeOpt,
    QuantizeVisionOpt,
    SeedOpt,
    TemperatureOpt,
    TemplateOpt,
    TokenizerOpt,
    TopKOpt,
    TopPOpt,
    VideoOpt,
    VideoStrategyOpt,
    check_adapter,
    check_media_options,
    check_quantize,
)

if TYPE_CHECKING:
    from PIL import Image


def ask(
    question: Annotated[str, typer.Argument(help="What to ask.")],
    image: ImageOpt = None,
    video: VideoOpt = None,
    video_strategy: VideoStrategyOpt = None,
    num_frames: NumFramesOpt = DEFAULT_NUM_FRAMES,
    model: ModelOpt = None,
    tokenizer: TokenizerOpt = None,
    template: TemplateOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    quantize: QuantizeOpt = None,
    quantize_vision: QuantizeVisionOpt = False,
    adapter: AdapterOpt = None,
    compile: CompileOpt = False,
    max_new_tokens: MaxNewTokensOpt = 64,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    seed: SeedOpt = None,
    boxes_out: BoxesOutOpt = None,
) -> None:
    """Ask the model one question and stream its answer."""
    # Everything that can be checked without the model is, before torch and the model load (seconds).
    if image is not None and video is not None:
        raise ValueError("give --image or --video, not both")
    if boxes_out is not None and image is None:  # say so before the model runs, not after the answer
        raise ValueError("--boxes-out needs --image: boxes are drawn on the image they refer to")
    check_media_options(image, video, boxes_out, dtype)
    check_quantize(quantize, quantize_vision)
    check_adapter(adapter, quantize)
    check_decoded(question, "the question")

    from ..engine import SamplingParams
    from ..pipeline import Pipeline
    from ..processing.image import load_image
    from .media import load_media

    params = SamplingParams.from_temperature(temperature, max_new_tokens=max_new_tokens, top_p=top_p, top_k=top_k,
                                             seed=seed)
    picture = load_image(image) if image is not None else None  # an unreadable image fails before the model loads
    pipe = Pipeline.load(model, tokenizer=tokenizer, dtype=dtype, device=device, quantize=quantize,
                         quantize_vision=quantize_vision,
                         adapter=adapter, compile=compile)
    images = load_media(pipe, image=picture, video=video, template=template, video_strategy=video_strategy,
                        num_frames=num_frames)
    answer = []
    for event in pipe.stream(question, images=images, template=template, params=params):
        sys.stdout.write(event.text)
        sys.stdout.flush()
        answer.append(event.text)
    sys.stdout.write("\n")
    if boxes_out is not None:
        save_boxes(picture, "".join(answer), boxes_out)


def save_boxes(image: Path | Image.Image, answer: str, out: Path) -> None:
    from ..grounding import draw_boxes, parse_boxes
    from ..processing.image import load_image

    result = parse_boxes(answer)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_boxes(load_image(image), result).save(out)
    typer.echo(f"{len(result.boxes)} box(es) drawn to {out}" + (f"; {len(result.errors)} malformed" if result.errors
                                                                   else ""), err=True)
