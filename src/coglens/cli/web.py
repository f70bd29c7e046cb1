"""``coglens web``: the Gradio chat demo in the browser."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import (
    AdapterOpt,
    CompileOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    QuantizeOpt,
    QuantizeVisionOpt,
    TokenizerOpt,
    check_adapter,
    check_dtype,
    check_quantize,
)


def web(
    model: ModelOpt = None,
    tokenizer: TokenizerOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    quantize: QuantizeOpt = None,
    quantize_vision: QuantizeVisionOpt = False,
    adapter: AdapterOpt = None,
    compile: CompileOpt = False,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on (0.0.0.0: all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 7860,
    share: Annotated[bool, typer.Option("--share/--no-share", help="Also open a gradio.live link.")] = False,
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", min=1, help="Most answers decoded together (concurrent users).")
    ] = 8,
) -> None:
    """Serve the web chat demo: image/video upload, streamed answers, grounding boxes drawn."""
    check_dtype(dtype)
    check_quantize(quantize, quantize_vision)
    check_adapter(adapter, quantize)
    try:
        from ..chat.web import launch
    except ImportError as exc:  # Gradio is an optional extra
        typer.echo(f"error: coglens web needs Gradio ({exc}); pip install 'coglens[web]'", err=True)
        raise typer.Exit(1) from exc
    from ..pipeline import Pipeline

    pipe = Pipeline.load(model, tokenizer=tokenizer, dtype=dtype, device=device,
                         max_batch_size=max_batch_size, quantize=quantize, quantize_vision=quantize_vision,
                         adapter=adapter, compile=compile)
    typer.echo(f"Serving {pipe.model_path} on http://{host}:{port} (Ctrl-C stops)", err=True)
    launch(pipe, host=host, port=port, share=share)
