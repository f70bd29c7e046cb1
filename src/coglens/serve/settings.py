"""Everything ``coglens serve`` is started with, in one object the app factory takes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..modeling.quantization import SCHEMES
from ..pipeline import DEFAULT_TINY_MODEL
from .limits import ServeLimits


@dataclass(frozen=True)
class ServeSettings:
    """How the server is set up. ``model`` is a checkpoint folder or ``tiny:VARIANT``; it also names the model
    for clients unless ``served_model_names`` are given."""

    model: str = DEFAULT_TINY_MODEL
    tokenizer: str | None = None
    dtype: str | None = None
    device: str | None = None
    quantize: str | None = None  # one of SCHEMES: quantize the weights while loading
    quantize_vision: bool = False  # with quantize: the vision tower, adapter and lm_head too
    max_batch_size: int = 8  # used when the app loads the model itself; a given Pipeline keeps its own
    adapters: Mapping[str, str | Path] = field(default_factory=dict)  # LoRA adapters requests pick by name
    served_model_names: tuple[str, ...] = ()  # names clients may send as ``model`` (default: ``model``)
    template: str | None = None  # prompt template for every request (default: the checkpoint's own)
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    allow_local_media: Path | None = None
    allow_remote_media: bool = False
    limits: ServeLimits = field(default_factory=ServeLimits)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")
        if self.quantize is not None and self.quantize not in SCHEMES:
            raise ValueError(f"--quantize {self.quantize!r} is not one of {', '.join(SCHEMES)}")
        if self.quantize_vision and self.quantize is None:
            raise ValueError(f"--quantize-vision needs --quantize {{{','.join(SCHEMES)}}}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("--api-key is empty; give a secret, or leave the option out to serve without auth")
        if self.adapters:
            from ..modeling.adapters import check_adapter_folder, check_adapter_name

            for name, path in self.adapters.items():
                check_adapter_name(name)
                check_adapter_folder(path)
        if self.allow_local_media is not None and not Path(self.allow_local_media).is_dir():
            raise ValueError(f"--allow-local-media {str(self.allow_local_media)!r} is not a directory")
