"""The CogVLM family as a vLLM model plugin: ``vllm serve CKPT`` / ``vllm.LLM(CKPT)`` on THUDM's checkpoints.

vLLM finds :func:`register` through the ``vllm.general_plugins`` entry point that ``pip install coglens``
declares, and calls it in every vLLM process before any config is read. Nothing here imports vLLM until then,
so the package works without it.

The pieces: :mod:`.config` (THUDM's ``config.json`` read by our config classes, positions declared as
model-defined), :mod:`.inputs` (prompts, images and video frames laid out by CogLens's rules), :mod:`.model`
(the decoder with visual experts on vLLM's paged attention and tensor-parallel layers).
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

ARCHITECTURES = ("CogVLMForCausalLM", "CogVLMVideoForCausalLM")  # as THUDM's config.json files name them
# as folders CogLens saves name them (save_pretrained, merge-adapter, quantize); their config.json has model_type
SAVED_ARCHITECTURES = ("CogvlmForCausalLM", "Cogvlm2ForCausalLM", "Cogvlm2VideoForCausalLM")
_MODEL_CLASS = "coglens.vllm_plugin.model:CogvlmForVllm"


def register() -> None:
    """Teach vLLM the CogVLM family (idempotent). Called by vLLM through the entry point, in every vLLM process.

    vLLM does not guard its plugins, so a failure here (another vLLM or transformers version beside CogLens) is
    logged and the plugin steps aside: vLLM keeps serving every other model.
    """
    try:
        from vllm import ModelRegistry

        from coglens.vllm_plugin.config import register_configs

        register_configs()
        supported = set(ModelRegistry.get_supported_archs())
        for architecture in (*ARCHITECTURES, *SAVED_ARCHITECTURES):
            if architecture not in supported:
                ModelRegistry.register_model(architecture, _MODEL_CLASS)
    except Exception as exc:  # noqa: BLE001 - any failure must leave vLLM usable for other models
        logger.warning("coglens: the CogVLM plugin for vLLM is not active (%s: %s); it is tested with vLLM 0.32",
                       type(exc).__name__, exc)


def chat_template_path() -> Path:
    """The Jinja chat template that renders OpenAI messages with CogVLM's ``chat`` / ``vqa`` / ``base`` prompts.

    Pass it to ``vllm serve --chat-template``; ``chat_template_kwargs={"template_version": "vqa"}`` picks the
    template per request (default ``chat``).
    """
    return Path(__file__).with_name("chat_template.jinja")
