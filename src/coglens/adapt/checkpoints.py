"""Training checkpoints: ``checkpoint-STEP/`` folders holding the adapter as peft saves it plus what a rerun needs
to continue exactly (optimizer moments, learning-rate schedule, step, random state), so an interrupted run picks up
where it stopped."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"checkpoint-{step}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step (a folder without its state file was cut off while saving)."""
    found = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*")
             if (m := _NAME.fullmatch(p.name)) and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def save_checkpoint(folder: Path, peft_model: Any, optimizer: torch.optim.Optimizer, scheduler: LambdaLR, step: int,
                    schedule: dict[str, Any]) -> None:
    """The adapter (``save_pretrained``: loadable with ``PeftModel.from_pretrained``), then the trainer state
    last, so its presence marks a finished checkpoint. ``schedule``: what fixes the learning-rate curve
    (``FinetuneConfig.schedule``)."""
    peft_model.save_pretrained(folder)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "schedule": schedule, "torch_rng": torch.get_rng_state()}
    torch.save(state, folder / STATE_FILE)


def load_checkpoint(folder: Path, peft_model: Any, optimizer: torch.optim.Optimizer, scheduler: LambdaLR,
                    schedule: dict[str, Any]) -> int:
    """Restore the adapter weights, optimizer, scheduler and random state from ``folder``; returns its step. A
    checkpoint saved under another ``schedule`` (say a shorter ``max_steps`` with a decaying one) goes on along
    this run's curve from its step, with a warning: neither run's learning rates are then followed throughout."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(folder / "adapter_model.safetensors", device=str(_device(peft_model)))
    set_peft_model_state_dict(peft_model, weights)
    state = torch.load(folder / STATE_FILE, weights_only=True)  # tensors and plain values: no code unpickled
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    step = int(state["step"])
    if state.get("schedule") == schedule:
        scheduler.load_state_dict(state["scheduler"])
    else:
        warnings.warn(
            f"{folder} was saved under the learning-rate schedule {state.get('schedule')}, this run's is "
            f"{schedule}: from step {step} on the learning rate follows this run's, so the result matches an "
            "uninterrupted run of neither; use a new output_dir to train along one curve throughout", stacklevel=2)
        # the optimizer state just loaded holds the old curve's rate: put this schedule's for `step` in its place
        scheduler.last_epoch = step
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
            group["lr"] = base * factor(step)
    return step


def _device(model: Any) -> torch.device:
    return next(p.device for p in model.parameters() if p.requires_grad)
