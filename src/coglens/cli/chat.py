"""``coglens chat``: talk with the model about an image (or video) in the terminal."""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Annotated

import typer

from ._options import (
    AdapterOpt,
    BoxesOutOpt,
    CompileOpt,
    DeviceOpt,
    DtypeOpt,
    ImageOpt,
    MaxNewTokensOpt,
    ModelOpt,
    QuantizeOpt,
    QuantizeVisionOpt,
    SeedOpt,
    TemperatureOpt,
    TemplateOpt,
    TokenizerOpt,
    TopKOpt,
    TopPOpt,
    VideoOpt,
    check_adapter,
    check_media_options,
    check_quantize,
)

GroundingOpt = Annotated[
    bool, typer.Option("--grounding", help="Grounding checkpoints: base template, and the boxes of each "
                       "answer listed (and drawn to --boxes-out).")
]
MultiImageOpt = Annotated[
    bool, typer.Option("--multi-image", help="Keep the history when /image switches images (each image stays "
                       "with its turn; an extension the released models were not trained on).")
]


def chat(
    image: ImageOpt = None,
    video: VideoOpt = None,
    model: ModelOpt = None,
    tokenizer: TokenizerOpt = None,
    template: TemplateOpt = None,
    grounding: GroundingOpt = False,
    multi_image: MultiImageOpt = False,
    boxes_out: BoxesOutOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    quantize: QuantizeOpt = None,
    quantize_vision: QuantizeVisionOpt = False,
    adapter: AdapterOpt = None,
    compile: CompileOpt = False,
    max_new_tokens: MaxNewTokensOpt = 512,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    seed: SeedOpt = None,
) -> None:
    """Chat in the terminal: streamed answers, history, clear / stop, /image, /video, /save."""
    # Everything that can be checked without the model is, before torch and the model load (seconds).
    if image is not None and video is not None:
        raise typer.BadParameter("give --image or --video, not both")
    if grounding and template not in (None, "base"):
        raise typer.BadParameter(f"--grounding uses the base template; drop --template {template}")
    check_media_options(image, video, boxes_out, dtype)
    check_quantize(quantize, quantize_vision)
    check_adapter(adapter, quantize)

    from ..chat.repl import ChatRepl
    from ..chat.session import ChatSession
    from ..engine import SamplingParams
    from ..pipeline import Pipeline

    params = SamplingParams.from_temperature(temperature, max_new_tokens=max_new_tokens, top_p=top_p, top_k=top_k,
                                             seed=seed)
    _read_undecodable_input()
    _enable_line_editing()
    typer.echo("Loading the model...", err=True)
    pipe = Pipeline.load(model, tokenizer=tokenizer, dtype=dtype, device=device, max_batch_size=1,
                         quantize=quantize, quantize_vision=quantize_vision,
                         adapter=adapter, compile=compile)
    session = ChatSession(pipe, template="base" if grounding else template, multi_image=multi_image)
    if image is not None:
        session.set_media(session.load_image(image))
    elif video is not None:
        session.set_media(session.load_video(video))
    ChatRepl(session, params, grounding=grounding, boxes_out=boxes_out).run()


def _read_undecodable_input() -> None:
    """Let a typed line that is not UTF-8 reach the chat (which says so and goes on) instead of ending it with a
    UnicodeDecodeError: stdin hands its bad bytes over as surrogate escapes."""
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="surrogateescape")


def _enable_line_editing() -> None:
    """Arrow keys and an up-arrow history of the typed lines, where Python has readline (not on Windows)."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (importing it is what hooks it into input())
