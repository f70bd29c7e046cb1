"""What a fine-tuning run is asked to do: one dataclass, read from YAML (``coglens finetune --config``) or built in
Python, checked before any model loads so a typo fails in milliseconds."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Named groups of CogVLM modules to put LoRA on. Each is a regex over module names (peft's ``target_modules``
# takes a string as a full-match regex); CogVLM routes image tokens and text tokens through separate "expert"
# weights, so adapting only the language experts leaves the image path untouched.
MODULE_GROUPS: dict[str, str] = {
    "language_experts": r"model\.layers\.\d+\.(self_attn\.language_expert_\w+|mlp\.language_mlp\.\w+_proj)",
    "vision_experts": r"model\.layers\.\d+\.(self_attn\.vision_expert_\w+|mlp\.vision_mlp\.\w+_proj)",
    "attention": r"model\.layers\.\d+\.self_attn\.\w+_expert_\w+",
    "mlp": r"model\.layers\.\d+\.mlp\.\w+_mlp\.\w+_proj",
    "vision_tower": r"model\.vision\.transformer\.layers\.\d+\.(attention\.(query_key_value|dense)|mlp\.fc\d)",
}
DTYPES = ("float32", "bfloat16")
# transformers' schedules (``get_scheduler``) that need no options beyond warmup and the run's length
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "inverse_sqrt")
_DECAYING = ("linear", "cosine")  # their curve is stretched over max_steps


@dataclass
class FinetuneConfig:
    """A LoRA fine-tuning run. ``train``/``eval``: a JSONL or CSV manifest (relative media paths are taken from
    the manifest's folder) or ``hf:NAME[:SPLIT]`` for a Hugging Face dataset; ``eval_fraction`` carves an eval
    split off ``train`` when no ``eval`` is given. ``target_modules``: names from :data:`MODULE_GROUPS` and/or
    regexes over module names (full match). ``batch_size`` rows per step, times ``grad_accum`` per optimizer
    step; ``max_steps`` counts optimizer steps. ``lr_scheduler``: one of :data:`SCHEDULERS` (the decaying ones
    reach 0 at ``max_steps``), after ``warmup_steps`` (or ``warmup_ratio`` of ``max_steps``) of linear warmup.
    ``train_on_history``: the answers of the history turns are learned (and count in the eval loss) too, not only
    the final one.
    ``quantize: nf4`` loads the base weights in 4 bits (QLoRA)."""

    output_dir: Path
    train: str
    model: str = "tiny:cogvlm2"
    eval: str | None = None
    eval_fraction: float = 0.0
    template: str | None = None
    target_modules: list[str] = field(default_factory=lambda: ["language_experts"])
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    dtype: str = "float32"
    quantize: str | None = None
    device: str | None = None
    gradient_checkpointing: bool = False
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"  # the run's length leaves its rates alone: a smoke run resumes as one run
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    train_on_history: bool = False
    batch_size: int = 4
    grad_accum: int = 1
    max_steps: int = 100
    save_every: int = 50
    eval_every: int = 0
    max_new_tokens: int = 16
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if not self.target_modules:
            raise ValueError("target_modules is empty: name module groups or patterns to put LoRA on")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        for name in ("rank", "batch_size", "grad_accum", "max_steps", "save_every", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1 or not 0 <= self.eval_fraction < 1:
            raise ValueError("dropout and eval_fraction must be in [0, 1)")
        if self.lr_scheduler not in SCHEDULERS:
            raise ValueError(f"lr_scheduler {self.lr_scheduler!r}: use one of {', '.join(SCHEDULERS)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be at least 0, got {self.warmup_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) and warmup_ratio ({self.warmup_ratio}) are both "
                             "set: give one of them")
        if self.lr_scheduler == "constant" and self.num_warmup_steps:
            raise ValueError("lr_scheduler 'constant' has no warmup, but warmup_steps or warmup_ratio is set: use "
                             "lr_scheduler 'constant_with_warmup'")
        if self.quantize is not None:
            from coglens.modeling.quantization import SCHEMES

            if self.quantize not in SCHEMES:
                raise ValueError(f"quantize {self.quantize!r}: use one of {', '.join(SCHEMES)}")
        if self.template is not None:
            from coglens.processing.template import resolve_template

            resolve_template(self.template, None)

    @property
    def target_pattern(self) -> str:
        """One full-match regex for peft: the named groups expanded, the other entries taken as regexes."""
        return "|".join(f"(?:{MODULE_GROUPS.get(entry, entry)})" for entry in self.target_modules)

    @property
    def num_warmup_steps(self) -> int:
        """``warmup_steps``, or ``warmup_ratio`` of ``max_steps`` rounded up (as transformers' Trainer does)."""
        return self.warmup_steps or math.ceil(self.warmup_ratio * self.max_steps)

    @property
    def schedule(self) -> dict[str, Any]:
        """What fixes the learning rate of every step; checkpoints record it, so a resumed run can tell whether it
        goes on along the same curve."""
        return {"lr_scheduler": self.lr_scheduler, "learning_rate": self.learning_rate,
                "warmup_steps": self.num_warmup_steps,
                "max_steps": self.max_steps if self.lr_scheduler in _DECAYING else None}

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> FinetuneConfig:
        """Read ``path``; ``overrides`` that are not None (the command's options) replace its values. Relative
        ``train``/``eval``/``output_dir`` paths are taken from the YAML file's folder."""
        import yaml

        path = Path(path)
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of options, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        for key in ("train", "eval", "output_dir"):
            value = values.get(key)
            if isinstance(value, str) and not value.startswith("hf:") and not Path(value).is_absolute():
                values[key] = str(path.parent / value)
        missing = [name for name in ("output_dir", "train") if name not in values]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        return cls(**values)
