"""``CogvlmProcessor``: queries, images and history -> one left-padded batch for ``CogvlmForCausalLM``.

A ``transformers.ProcessorMixin`` made of a :class:`CogvlmImageProcessor` and the checkpoint's tokenizer, plus
the few checkpoint settings the prompt layout needs (``variant``, ``template_version``, ``image_size``,
``num_image_tokens``, ``image_token_id``, ``max_position_embeddings``, ``bos_token_id``). ``save_pretrained``
writes them to ``processor_config.json`` (with the image processor) next to the tokenizer files, so
``from_pretrained`` / ``AutoProcessor.from_pretrained`` restore it without the model's ``config.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, PreTrainedTokenizerBase, ProcessorMixin
from transformers.utils import CHAT_TEMPLATE_DIR, CHAT_TEMPLATE_FILE, LEGACY_PROCESSOR_CHAT_TEMPLATE_FILE

from coglens.hub import pop_hub_kwargs, resolve_checkpoint
from coglens.modeling.configuration_cogvlm import (
    COGVLM,
    COGVLM2_VIDEO,
    LLAMA3_IMAGE_TOKEN_ID,
    VARIANTS,
    CogvlmConfig,
    load_config,
)

# The module, not its names: coglens.modeling registers CogvlmProcessor with the Auto classes as soon as it is
# imported, which can happen while conversation.py (it imports coglens.modeling) is still half-initialised.
from coglens.processing import conversation
from coglens.processing.errors import ConversationError, ProcessingError
from coglens.processing.image_processor import CogvlmImageProcessor
from coglens.processing.padding import left_padded_batch
from coglens.processing.template import resolve_template
from coglens.processing.tokenizer import load_tokenizer

PROCESSOR_CONFIG = "processor_config.json"
IMAGE_PROCESSOR_CONFIG = "preprocessor_config.json"
DEFAULT_PATCH_SIZE = 14
# from_pretrained keywords that transformers (AutoProcessor, pipelines) passes along and that mean nothing here
_IGNORED_LOAD_KWARGS = ("trust_remote_code", "_from_auto", "_from_pipeline", "proxies", "code_revision",
                        "return_unused_kwargs", "use_fast", "backend")


@dataclass(frozen=True)
class VisionLayout:
    image_size: int


@dataclass(frozen=True)
class ProcessorLayout:
    """The checkpoint settings :func:`build_conversation_input_ids` reads, as the processor holds them.

    It stands in for the model's ``CogvlmConfig`` (same attribute names) when a processor is loaded from its
    own files without the model's ``config.json``.
    """

    variant: str
    template_version: str
    num_image_tokens: int
    image_token_id: int
    max_position_embeddings: int | None
    bos_token_id: int | None
    vision_config: VisionLayout

    @property
    def is_video(self) -> bool:
        return self.variant == COGVLM2_VIDEO


class CogvlmProcessor(ProcessorMixin):
    """Builds each row with :func:`build_conversation_input_ids` and left-pads them into one batch.

    Construct it from a checkpoint (``CogvlmProcessor.from_pretrained(folder_or_hub_id)``), from a tokenizer and
    the model's config (``CogvlmProcessor(tokenizer, config)`` or ``CogvlmProcessor.from_config(tokenizer,
    config)``), or transformers-style from its parts (``CogvlmProcessor(image_processor, tokenizer,
    variant=..., ...)``).

    Two ways to call it:

    - ``processor(queries, images=..., history=..., template_version=..., allow_multiple_images=...)``: returns
      ``input_ids``, ``token_type_ids``, ``attention_mask`` and ``images`` (one list of tensors per row).
    - ``processor(text=..., images=...)`` (transformers style, one image or ``None`` per text): the same
      ``input_ids``, ``token_type_ids``, ``attention_mask``, and ``pixel_values`` (B, 3, S, S) when every row
      has exactly one image; otherwise (text-only or mixed rows, video clips) ``images`` as above, or nothing
      for a text-only batch.

    Padding uses the tokenizer's pad id (0 if it has none), token type 0 and attention mask 0, the convention
    the model's position ids and the original batched generation expect.
    """

    attributes = ["image_processor", "tokenizer"]  # informative: transformers reads them from __init__'s signature

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        config: CogvlmConfig | None = None,
        variant: str | None = None,
        template_version: str | None = None,
        image_size: int | None = None,
        num_image_tokens: int | None = None,
        image_token_id: int | None = None,
        max_position_embeddings: int | None = None,
        bos_token_id: int | None = None,
        chat_template: str | dict[str, str] | None = None,
    ) -> None:
        if isinstance(tokenizer, CogvlmConfig) and config is None:  # the historical CogvlmProcessor(tokenizer, config)
            image_processor, tokenizer, config = None, image_processor, tokenizer
        if tokenizer is None:
            raise ProcessingError("CogvlmProcessor needs a tokenizer")
        if config is not None and not isinstance(config, CogvlmConfig):
            raise ProcessingError(f"config must be a CogvlmConfig, got {type(config).__name__}")
        self._model_config = config
        derived = _settings_from_config(config) if config is not None else {}
        if image_processor is None:
            size = image_size or derived.get("image_size")
            image_processor = CogvlmImageProcessor() if size is None else CogvlmImageProcessor(image_size=size)
        explicit = {
            "variant": variant, "template_version": template_version, "image_size": image_size,
            "num_image_tokens": num_image_tokens, "image_token_id": image_token_id,
            "max_position_embeddings": max_position_embeddings, "bos_token_id": bos_token_id,
        }
        settings = {**derived, **{key: value for key, value in explicit.items() if value is not None}}
        self.variant = settings.get("variant", COGVLM)
        if self.variant not in VARIANTS:
            raise ProcessingError(f"unknown variant {self.variant!r}; expected one of {VARIANTS}")
        self.template_version = resolve_template(settings.get("template_version"), None)
        self.image_size = int(settings.get("image_size") or getattr(image_processor, "image_size", 0))
        if getattr(image_processor, "image_size", self.image_size) != self.image_size:
            raise ProcessingError(
                f"the image processor resizes to {image_processor.image_size} but the processor's image_size is "
                f"{self.image_size}; they must match the vision tower's vision_config.image_size"
            )
        self.num_image_tokens = int(settings.get("num_image_tokens") or _default_image_tokens(self.variant,
                                                                                              self.image_size))
        image_token = settings.get("image_token_id")
        self.image_token_id = int(_default_image_token_id(self.variant, tokenizer) if image_token is None
                                  else image_token)
        self.max_position_embeddings = settings.get("max_position_embeddings")
        self.bos_token_id = settings.get("bos_token_id")
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    # --- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, tokenizer: Any, config: CogvlmConfig, **kwargs: Any) -> CogvlmProcessor:
        """The processor of a loaded checkpoint: its tokenizer and its ``CogvlmConfig``."""
        return cls(tokenizer=tokenizer, config=config, **kwargs)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> CogvlmProcessor:
        """Load from a checkpoint folder or hub id (``revision``, ``cache_dir``, ``local_files_only``, ``token``).

        A folder with ``processor_config.json`` (written by :meth:`save_pretrained`) gives the saved processor;
        a THUDM checkpoint without it is read as before: ``config.json`` plus the tokenizer from
        ``tokenizer_path`` (a folder or hub id; CogVLM-1 needs Vicuna's) or else the checkpoint itself. Other
        keyword arguments override the processor settings (e.g. ``template_version="vqa"``).
        """
        hub = pop_hub_kwargs(kwargs)
        for key in _IGNORED_LOAD_KWARGS:
            kwargs.pop(key, None)
        if kwargs.pop("subfolder", ""):
            raise ProcessingError("subfolder= is not supported; pass the folder itself")
        accepted = set(_init_keywords()) - {"image_processor", "tokenizer", "config"}
        unknown = sorted(set(kwargs) - accepted - {"tokenizer", "image_processor"})
        if unknown:
            raise ProcessingError(
                f"CogvlmProcessor.from_pretrained got unexpected arguments {unknown}; processor settings are "
                f"{sorted(accepted)}"
            )
        folder = resolve_checkpoint(pretrained_model_name_or_path, weights=False, **hub)
        tokenizer_hub = {key: hub[key] for key in ("cache_dir", "local_files_only", "token") if key in hub}
        config = load_config(folder) if (folder / "config.json").is_file() else None
        saved: dict[str, Any] = {}
        if (folder / PROCESSOR_CONFIG).is_file():
            saved = _read_json(folder / PROCESSOR_CONFIG)
        elif config is None:
            raise ProcessingError(
                f"{str(pretrained_model_name_or_path)!r} has neither {PROCESSOR_CONFIG} (a saved CogvlmProcessor) "
                "nor config.json (a CogVLM checkpoint)"
            )
        image_processor = kwargs.pop("image_processor", None)
        if image_processor is None:
            image_processor = _load_image_processor(folder, saved, config)
        tokenizer = kwargs.pop("tokenizer", None)
        if tokenizer is None:
            variant = kwargs.get("variant") or saved.get("variant") or (config.variant if config else None)
            tokenizer = load_tokenizer(folder, tokenizer_path, config=config, variant=variant, **tokenizer_hub)
        settings = {key: value for key, value in saved.items() if key in accepted}
        settings.update(kwargs)
        if "chat_template" not in settings:
            chat_template = _read_chat_template(folder)
            if chat_template is not None:
                settings["chat_template"] = chat_template
        return cls(image_processor=image_processor, tokenizer=tokenizer, config=config, **settings)

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        """Any object with ``encode`` and ``bos_token_id`` serves as tokenizer (tests use small stand-ins)."""
        duck_typed = hasattr(argument, "encode") and hasattr(argument, "bos_token_id")
        if argument_name == "tokenizer" and not isinstance(argument, PreTrainedTokenizerBase) and duck_typed:
            return type(argument)
        return super().check_argument_for_proper_class(argument_name, argument)

    # --- what the prompt layout reads ---------------------------------------------------------------------

    @property
    def layout(self) -> ProcessorLayout:
        """The settings every row is built with (also :attr:`config` when no model config was given)."""
        return ProcessorLayout(
            variant=self.variant, template_version=self.template_version, num_image_tokens=self.num_image_tokens,
            image_token_id=self.image_token_id, max_position_embeddings=self.max_position_embeddings,
            bos_token_id=self.bos_token_id, vision_config=VisionLayout(self.image_size),
        )

    @property
    def config(self) -> CogvlmConfig | ProcessorLayout:
        """The model's ``CogvlmConfig`` when the processor was built from it, else :attr:`layout`."""
        return self._model_config if self._model_config is not None else self.layout

    @property
    def is_video(self) -> bool:
        """Set up for CogVLM2-Video: ``images`` are video clips."""
        return self.variant == COGVLM2_VIDEO

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else pad

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "token_type_ids", "attention_mask", "pixel_values"]

    # --- calling ------------------------------------------------------------------------------------------

    def __call__(
        self,
        queries: str | Sequence[str] | None = None,
        images: Any = None,
        *,
        text: str | Sequence[str] | None = None,
        history: Any = None,
        template_version: str | None = None,
        allow_multiple_images: bool | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Encode one query (``str``) or a batch (list of ``str``).

        For one query, ``images`` is its image (or list of images, or a CogVLM2-Video clip) and ``history``
        its list of turns. For a batch, both are lists with one entry per query (``None`` for none), or
        ``None``. Returns ``input_ids``, ``token_type_ids``, ``attention_mask`` ([B, L], left-padded) and
        ``images``: one list of tensors per row (``[]`` for a text-only row), ready for ``model(**batch)``.

        With ``text=`` instead of ``queries`` (transformers style; ``processor(images, text)`` positionally works
        too), ``images`` holds one image (or ``None``) per text, and an all-image batch comes back as
        ``pixel_values`` (B, 3, S, S) instead of ``images``. ``processor(images=...)`` alone gives the image
        processor's ``pixel_values``.

        Keyword arguments, as transformers passes them: ``return_tensors`` (``"pt"`` or ``None``; PyTorch tensors
        either way), ``padding`` (``True`` / ``"longest"``: rows are always left-padded to the longest) and
        ``return_attention_mask=True``; anything else is refused.
        """
        return_tensors = kwargs.pop("return_tensors", None)  # transformers passes it among the processing kwargs
        _check_call_kwargs(kwargs)
        if return_tensors not in (None, "pt"):
            raise ProcessingError(f"return_tensors={return_tensors!r} is not supported; use 'pt' (PyTorch)")
        hf_style = text is not None
        if hf_style and queries is not None:
            if images is not None or _is_text(queries):
                raise ProcessingError("pass the prompt either as queries (first argument) or as text=, not both")
            queries, images = None, queries  # processor(image, text=...)
        elif not hf_style and queries is not None and not _is_text(queries) and _is_text(images):
            queries, images, text, hf_style = None, queries, images, True  # processor(images, text), positionally
        if hf_style:
            queries = text
            images = _hf_images(text, images)
        elif queries is None:
            if images is None:
                raise ConversationError("nothing to encode: pass queries (or text=) and/or images")
            return self.image_processor(images, return_tensors="pt")
        if isinstance(queries, str):
            batch_queries, batch_images, batch_history = [queries], [images], [history]
        else:
            batch_queries = list(queries)
            if not batch_queries:
                raise ConversationError("queries is empty; pass a string or a non-empty list of strings")
            batch_images = _per_row(images, len(batch_queries), "images")
            batch_history = _per_row(history, len(batch_queries), "history")
        layout = self.layout
        rows = [
            conversation.build_conversation_input_ids(
                self.tokenizer, config=layout, query=query, history=self._prepare_history(row_history),
                images=self._prepare_images(row_images), template_version=template_version,
                allow_multiple_images=bool(allow_multiple_images),
            )
            for query, row_images, row_history in zip(batch_queries, batch_images, batch_history, strict=True)
        ]
        batch = self.collate(rows)
        return self._as_pixel_values(batch) if hf_style else batch

    def collate(self, rows: Sequence[dict[str, Any]]) -> BatchFeature:
        """Left-pad rows from ``build_conversation_input_ids`` into one batch."""
        input_ids, token_type_ids, attention_mask = left_padded_batch(
            [row["input_ids"] for row in rows], [row["token_type_ids"] for row in rows],
            [row["attention_mask"] for row in rows], pad_token_id=self.pad_token_id,
        )
        return BatchFeature({
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "images": [list(row["images"] or []) for row in rows],
        })

    def decode(self, token_ids: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(token_ids, **kwargs)

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(sequences, **kwargs)

    # --- helpers ------------------------------------------------------------------------------------------

    def _prepare_image(self, image: Any) -> Any:
        """A raw image -> its (3, S, S) pixels through the image processor; tensors of floats pass as they are."""
        if image is None or (isinstance(image, torch.Tensor) and image.is_floating_point()):
            return image
        if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim != 3 and image.ndim != 2:
            return image  # not an image: build_conversation_input_ids says what is wrong with it
        return self.image_processor(image, return_tensors="pt")["pixel_values"][0]

    def _prepare_images(self, images: Any) -> Any:
        if self.is_video:  # clips: build_conversation_input_ids samples and transforms them
            return images
        if isinstance(images, (list, tuple)):
            return [self._prepare_image(image) for image in images]
        return self._prepare_image(images)

    def _prepare_history(self, history: Any) -> Any:
        if self.is_video or not isinstance(history, (list, tuple)):
            return history
        return [
            (*turn[:2], self._prepare_image(turn[2])) if isinstance(turn, (list, tuple)) and len(turn) == 3 else turn
            for turn in history
        ]

    def _as_pixel_values(self, batch: BatchFeature) -> BatchFeature:
        """transformers-style output: ``pixel_values`` (B, 3, S, S) when every row has exactly one image."""
        images = batch.pop("images")
        if all(not row for row in images):
            return batch
        single = all(len(row) == 1 and row[0].dim() == 3 for row in images)
        if single and not self.is_video:
            batch["pixel_values"] = torch.stack([row[0] for row in images])
        else:
            batch["images"] = images
        return batch


def _settings_from_config(config: CogvlmConfig) -> dict[str, Any]:
    return {
        "variant": config.variant, "template_version": config.template_version,
        "image_size": config.vision_config.image_size, "num_image_tokens": config.num_image_tokens,
        "image_token_id": config.image_token_id, "max_position_embeddings": config.max_position_embeddings,
        "bos_token_id": config.bos_token_id,
    }


def _default_image_tokens(variant: str, image_size: int) -> int:
    """Tokens per image of the released vision towers (patch 14; CogVLM2's 2x2 conv halves the grid)."""
    grid = image_size // DEFAULT_PATCH_SIZE // (1 if variant == COGVLM else 2)
    return grid * grid + 2


def _default_image_token_id(variant: str, tokenizer: Any) -> int:
    """As ``CogvlmConfig.image_token_id``: Llama-3's reserved 128002 for CogVLM2 when it exists, else the pad id."""
    try:
        size = len(tokenizer)
    except TypeError:
        size = 0
    if variant != COGVLM and size > LLAMA3_IMAGE_TOKEN_ID:
        return LLAMA3_IMAGE_TOKEN_ID
    pad = getattr(tokenizer, "pad_token_id", None)
    return 0 if pad is None else pad


def _init_keywords() -> list[str]:
    code = CogvlmProcessor.__init__.__code__
    return list(code.co_varnames[1 : code.co_argcount])


def _load_image_processor(folder: Path, saved: dict[str, Any], config: CogvlmConfig | None) -> CogvlmImageProcessor:
    if isinstance(saved.get("image_processor"), dict):
        return CogvlmImageProcessor.from_dict(saved["image_processor"])
    if (folder / IMAGE_PROCESSOR_CONFIG).is_file():
        return CogvlmImageProcessor.from_dict(_read_json(folder / IMAGE_PROCESSOR_CONFIG))
    if saved.get("image_size"):
        return CogvlmImageProcessor(image_size=saved["image_size"])
    if config is not None:
        return CogvlmImageProcessor.from_config(config)
    return CogvlmImageProcessor()


def _read_chat_template(folder: Path) -> str | dict[str, str] | None:
    """The chat template(s) ``ProcessorMixin.save_pretrained`` writes, read as ``ProcessorMixin.from_pretrained`` does.

    ``chat_template.jinja`` (plus named ones in ``additional_chat_templates/``, giving a dict with ``"default"``),
    or the legacy ``chat_template.json``.
    """
    legacy = folder / LEGACY_PROCESSOR_CHAT_TEMPLATE_FILE
    named = sorted((folder / CHAT_TEMPLATE_DIR).glob("*.jinja")) if (folder / CHAT_TEMPLATE_DIR).is_dir() else []
    if legacy.is_file():
        if named:
            raise ProcessingError(
                f"{folder} has both a legacy {LEGACY_PROCESSOR_CHAT_TEMPLATE_FILE} and {CHAT_TEMPLATE_DIR}/; "
                f"replace the legacy file with {CHAT_TEMPLATE_FILE}"
            )
        template = _read_json(legacy).get("chat_template")
        return template if isinstance(template, (str, dict)) else None
    templates = {path.stem: path.read_text(encoding="utf-8") for path in named}
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if list(templates) == ["default"]:
        return templates["default"]
    return templates or None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ProcessingError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ProcessingError(f"{path} must hold a JSON object")
    return data


def _check_call_kwargs(kwargs: dict[str, Any]) -> None:
    """transformers-style keywords that describe what we do anyway are accepted; anything else is refused."""
    padding = kwargs.pop("padding", None)
    if padding not in (None, True, "longest"):
        raise ProcessingError(f"padding={padding!r} is not supported: rows are always left-padded to the longest")
    if kwargs.pop("return_attention_mask", True) is not True:
        raise ProcessingError("return_attention_mask=False is not supported: the model needs the mask")
    if kwargs:
        raise ProcessingError(
            f"CogvlmProcessor got unsupported arguments {sorted(kwargs)}; it takes queries / text, images, "
            "history, template_version, allow_multiple_images and return_tensors"
        )


def _is_text(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(item, str) for item in value)


def _hf_images(text: Any, images: Any) -> Any:
    """transformers-style images (one per text, ``None`` or ``[]`` for none, ``[image]`` accepted) -> per-row."""
    if not _is_text(text):
        raise ConversationError("text must be a string or a non-empty list of strings")
    if isinstance(text, str):
        row = images
        if isinstance(row, (list, tuple)):
            if len(row) > 1:
                raise ConversationError(
                    f"{len(row)} images for one text; the transformers-style call takes one image per text (use "
                    "processor(query, images=..., history=..., allow_multiple_images=True) for more)"
                )
            row = row[0] if row else None
        return row
    if images is None:
        return None
    if not isinstance(images, (list, tuple)) or len(images) != len(text):
        got = f"{len(images)} entries" if isinstance(images, (list, tuple)) else type(images).__name__
        raise ConversationError(
            f"for {len(text)} texts, images must be a list with one image (or None) per text, got {got}"
        )
    rows = []
    for index, row in enumerate(images):
        if isinstance(row, (list, tuple)):
            if len(row) > 1:
                raise ConversationError(f"images[{index}] has {len(row)} images; take one image per text")
            row = row[0] if row else None
        rows.append(row)
    return rows


def _per_row(values: Any, batch_size: int, name: str) -> list[Any]:
    if values is None:
        return [None] * batch_size
    if not isinstance(values, (list, tuple)) or len(values) != batch_size:
        got = f"{len(values)} entries" if isinstance(values, (list, tuple)) else type(values).__name__
        raise ConversationError(
            f"for a batch of {batch_size} queries, {name} must be a list with one entry per query (None for "
            f"none), got {got}"
        )
    return list(values)
