"""``coglens serve``: one HTTP server speaking the OpenAI, TGI, vLLM and Triton protocols."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    QuantizeOpt,
    QuantizeVisionOpt,
    TemplateOpt,
    TokenizerOpt,
    check_dtype,
    check_quantize,
)

MIB = 1 << 20


def serve(
    model: ModelOpt = None,
    tokenizer: TokenizerOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    quantize: QuantizeOpt = None,
    quantize_vision: QuantizeVisionOpt = False,
    compile: Annotated[bool | None, typer.Option(
        "--compile/--no-compile",
        help="Compile the decode step with torch.compile before serving (default: on the CPU, where it is measured "
             "to pay; CUDA graphs with --compile).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="COGLENS_API_KEY",
        help="Require 'Authorization: Bearer KEY' on every route but /health and the docs.")] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="Requests decoded together.")] = 8,
    served_model_name: Annotated[list[str] | None, typer.Option(
        "--served-model-name", help="Name clients send as 'model' (repeatable; default: --model as given).")] = None,
    adapter: Annotated[list[str] | None, typer.Option(
        "--adapter", metavar="NAME=PATH",
        help="A LoRA adapter (PEFT folder) that requests pick by adapter_id or model=NAME (repeatable); "
             "requests for different adapters share the batch.")] = None,
    template: TemplateOpt = None,
    allow_local_media: Annotated[Path | None, typer.Option(
        "--allow-local-media", help="Let requests name image/video files under this folder.")] = None,
    allow_remote_media: Annotated[bool, typer.Option(
        "--allow-remote-media", help="Let the server download http(s) media URLs (public addresses only).")] = False,
    cors_origin: Annotated[list[str] | None, typer.Option(
        "--cors-origin", help="Allow browser calls from this origin (repeatable; off by default).")] = None,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Largest request body.")] = 32,
    max_image_mb: Annotated[float, typer.Option("--max-image-mb", help="Largest local/remote image file.")] = 20,
    max_image_pixels: Annotated[int, typer.Option("--max-image-pixels", help="Largest image (width x height).")]
    = 25_000_000,
    max_video_frame_pixels: Annotated[int, typer.Option(
        "--max-video-frame-pixels", help="Largest video frame (width x height, read before decoding).")] = 8_294_400,
    max_video_mb: Annotated[float, typer.Option("--max-video-mb", help="Largest video.")] = 200,
    max_video_seconds: Annotated[float, typer.Option("--max-video-seconds", help="Longest video.")] = 600,
    max_prompt_tokens: Annotated[int, typer.Option("--max-prompt-tokens", help="Longest prompt, images included.")]
    = 16_384,
    max_media_parts: Annotated[int, typer.Option("--max-media-parts", help="Most images + videos per request.")]
    = 16,
    max_request_pixels: Annotated[int, typer.Option(
        "--max-request-pixels", help="Pixels of all images and sampled video frames of one request.")] = 100_000_000,
    max_json_depth: Annotated[int, typer.Option("--max-json-depth", help="Deepest JSON nesting of a body.")] = 64,
    body_timeout: Annotated[float, typer.Option("--body-timeout", help="Seconds to receive a request body.")] = 30,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests waiting for the batch before 429s.")] = 256,
    max_n: Annotated[int, typer.Option("--max-n", help="Most choices per request (n).")] = 8,
    request_timeout: Annotated[float, typer.Option("--request-timeout", help="Seconds a request may take.")] = 600,
    fetch_timeout: Annotated[float, typer.Option("--fetch-timeout", help="Seconds one media download may take.")]
    = 15,
    max_redirects: Annotated[int, typer.Option("--max-redirects", help="Redirects followed per media URL.")] = 3,
    log_level: Annotated[str, typer.Option("--log-level", help="debug | info | warning | error.")] = "info",
) -> None:
    """Serve the model over HTTP: OpenAI, TGI, vLLM and Triton protocols on one port (docs at /docs)."""
    # The checks that need none of the server's modules (fastapi, torch: seconds) come first; the same
    # words as ServeSettings / ServeLimits, which check again for API users.
    check_dtype(dtype)
    check_quantize(quantize, quantize_vision)
    log_level_number(log_level)
    if max_batch_size < 1:
        raise ValueError(f"--max-batch-size must be >= 1, got {max_batch_size}")
    if api_key is not None and not api_key.strip():
        raise ValueError("--api-key is empty; give a secret, or leave the option out to serve without auth")
    if allow_local_media is not None and not allow_local_media.is_dir():
        raise ValueError(f"--allow-local-media {str(allow_local_media)!r} is not a directory")
    from ..modeling.adapters import parse_named_adapters  # light: peft loads with the model

    adapters = parse_named_adapters(adapter or [])
    from ..serve.limits import ServeLimits  # light: validates every limit with its flag's name

    limits = ServeLimits(
        max_body_bytes=int(max_body_mb * MIB), max_image_bytes=int(max_image_mb * MIB),
        max_image_pixels=max_image_pixels, max_video_frame_pixels=max_video_frame_pixels,
        max_video_bytes=int(max_video_mb * MIB), max_video_seconds=max_video_seconds,
        max_media_parts=max_media_parts, max_request_pixels=max_request_pixels, max_prompt_tokens=max_prompt_tokens,
        max_json_depth=max_json_depth, body_timeout_s=body_timeout, max_queue=max_queue, max_n=max_n,
        request_timeout_s=request_timeout, fetch_timeout_s=fetch_timeout, max_redirects=max_redirects,
    )

    import uvicorn

    from ..pipeline import DEFAULT_TINY_MODEL, Pipeline
    from ..serve.app import create_app, model_names
    from ..serve.service import check_adapter_names
    from ..serve.settings import ServeSettings

    settings = ServeSettings(
        model=model or DEFAULT_TINY_MODEL, tokenizer=tokenizer, dtype=dtype, device=device, quantize=quantize,
        quantize_vision=quantize_vision,
        max_batch_size=max_batch_size, served_model_names=tuple(served_model_name or ()), template=template,
        adapters=adapters,
        api_key=api_key, cors_origins=tuple(cors_origin or ()), allow_local_media=allow_local_media,
        allow_remote_media=allow_remote_media, limits=limits,
    )
    check_adapter_names(model_names(settings), adapters)  # before the model loads; its own names after
    configure_logging(log_level)
    # Loading here (not in the lifespan) turns a bad --model into one clear error line instead of a traceback.
    pipeline = Pipeline.load(settings.model, tokenizer=tokenizer, dtype=dtype, device=device,
                             max_batch_size=max_batch_size, quantize=quantize, quantize_vision=quantize_vision,
                             adapters=adapters, compile="auto" if compile is None else compile)
    if pipeline.engine.decode_step.compiled:
        logging.getLogger("coglens.serve").info("compiling the decode step before serving (--no-compile skips this)")
        pipeline.engine.warm_up()
    check_adapter_names(model_names(settings, pipeline), adapters)
    uvicorn.run(create_app(settings, pipeline=pipeline), host=host, port=port, log_level=log_level.lower(),
                access_log=False)  # our own JSON access log replaces uvicorn's


def log_level_number(level: str) -> int:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"--log-level {level!r} is not a level; use debug, info, warning or error")
    return numeric


def configure_logging(level: str) -> None:
    """JSON access lines as they are; everything else of coglens.serve with its logger name."""
    numeric = log_level_number(level)
    access = logging.getLogger("coglens.serve.access")
    access.setLevel(numeric)
    access.propagate = False
    if not access.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
    logging.getLogger("coglens.serve").setLevel(numeric)
