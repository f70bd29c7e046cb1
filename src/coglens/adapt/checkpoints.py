"""Training checkpoints: ``checkpoint-STEP/`` folders holding the adapter as peft saves it plus what a rerun needs
to continue exactly (optimizer moments, step, random state), so an interrupted run picks up where it stopped."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"checkpoint-{step}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step (a folder without its state file was cut off while saving)."""
    found = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*")
             if (m := _NAME.fullmatch(p.name)) and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def save_checkpoint(folder: Path, peft_model: Any, optimizer: torch.optim.Optimizer, step: int) -> None:
    """The adapter (``save_pretrained``: loadable with ``PeftModel.from_pretrained``), then the trainer state
    last, so its presence marks a finished checkpoint."""
    peft_model.save_pretrained(folder)
    state = {"step": step, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
    torch.save(state, folder / STATE_FILE)


def load_checkpoint(folder: Path, peft_model: Any, optimizer: torch.optim.Optimizer) -> int:
    """Restore the adapter weights, optimizer and random state from ``folder``; returns its step."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(folder / "adapter_model.safetensors", device=str(_device(peft_model)))
    set_peft_model_state_dict(peft_model, weights)
    state = torch.load(folder / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _device(model: Any) -> torch.device:
    return next(p.device for p in model.parameters() if p.requires_grad)
