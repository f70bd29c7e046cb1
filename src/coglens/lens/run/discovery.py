"""Finding module names to capture: one dry run on a synthetic input, and VLM-Lens's module log file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from coglens.lens.capture.modules import ModuleInfo, describe_modules, module_log_text
from coglens.processing import CogvlmProcessor
from coglens.tiny.variants import TINY_PREFIX

DRY_RUN_PROMPT = "Describe this image."
DRY_RUN_FRAMES = 2
LOGS_DIR = Path("logs")


def synthetic_image(size: int) -> Image.Image:
    """A deterministic RGB gradient: something for the vision tower to look at, no file needed."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    red, green = np.meshgrid(ramp, ramp)
    pixels = np.stack([red, green, 255 - red], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def dry_run_inputs(processor: CogvlmProcessor, device: torch.device | str = "cpu") -> dict[str, Any]:
    """One batch row (synthetic image, or a two-frame clip for a video model, plus a prompt) on `device`."""
    size = processor.config.vision_config.image_size
    if processor.is_video:
        media: Any = torch.zeros(DRY_RUN_FRAMES, 3, size, size)
    else:
        media = synthetic_image(size)
    batch = processor([DRY_RUN_PROMPT], images=[[media]])
    inputs = {k: batch[k].to(device) for k in ("input_ids", "token_type_ids", "attention_mask")}
    inputs["images"] = [[image.to(device) for image in row] for row in batch["images"]]
    return inputs


def list_modules(model: nn.Module, processor: CogvlmProcessor | None) -> list[ModuleInfo]:
    """Every module with class and parameter counts, plus (given a processor) what it received and returned
    in one forward pass on :func:`dry_run_inputs`."""
    if processor is None:
        return describe_modules(model)
    device = model.get_input_embeddings().weight.device
    return describe_modules(model, {**dry_run_inputs(processor, device), "use_cache": False})


def module_log_path(model_path: str, logs_dir: Path = LOGS_DIR) -> Path:
    """VLM-Lens's ``logs/<model_path>.txt``: a hub id keeps its folder (``logs/THUDM/cogvlm-chat-hf.txt``);
    a local folder gives its name, the built-in tiny model ``tiny-<variant>``."""
    name = model_path.replace(TINY_PREFIX, "tiny-", 1)
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith((".", "~")):
        name = path.resolve().name
    return logs_dir / f"{name}.txt"


def write_module_log(model: nn.Module, model_path: str, logs_dir: Path = LOGS_DIR) -> Path:
    """Write every module name, one a line (VLM-Lens's format), and return the file's path."""
    path = module_log_path(model_path, logs_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(module_log_text(describe_modules(model)))
    return path
