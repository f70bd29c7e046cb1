"""LoRA fine-tuning of CogVLM checkpoints (``coglens finetune``), through peft."""

from .config import MODULE_GROUPS, FinetuneConfig
from .train import FinetuneResult, evaluate, finetune

__all__ = ["MODULE_GROUPS", "FinetuneConfig", "FinetuneResult", "evaluate", "finetune"]
