"""Prompts, images and video frames for vLLM, laid out exactly as CogLens's processor lays them out.

vLLM tokenizes the prompt text itself (``add_special_tokens=True``, which gives ``[bos] + text``, or the chat
template writes ``bos``). The image span then goes right after ``bos``, whatever the text says, as in THUDM's
``build_conversation_input_ids``: ``config.num_image_tokens`` placeholder ids that the vision tower's features
(boi, patches, eoi) replace. A CogVLM2-Video clip is laid out by the template: ``chat`` puts each frame's span
followed by the frame's index as text, ``base``/``vqa`` one run of all frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptIndexTargets,
    PromptInsertion,
    PromptUpdate,
    PromptUpdateDetails,
)

from coglens.modeling.configuration_cogvlm import COGVLM, CogvlmConfig
from coglens.processing.conversation import clip_layout
from coglens.processing.image import preprocess_image
from coglens.processing.template import resolve_template
from coglens.processing.video import transform_clip
from coglens.processing.video.strategies import DEFAULT_NUM_FRAMES


class CogvlmProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> CogvlmConfig:
        return self.ctx.get_hf_config(CogvlmConfig)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"video": 1} if self.get_hf_config().is_video else {"image": 1}  # one per conversation, as trained

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"text_kwargs": {"template_version"}}

    def template(self, mm_kwargs: Mapping[str, object]) -> str:
        """``template_version`` from the request's ``mm_processor_kwargs`` (flat, or the text/video scopes that the
        video's cache key includes), else the checkpoint's."""
        chosen = mm_kwargs.get("template_version")
        for scope in ("text_kwargs", "videos_kwargs"):
            kwargs = mm_kwargs.get(scope)
            if isinstance(kwargs, Mapping) and kwargs.get("template_version"):
                chosen = kwargs["template_version"]
        return resolve_template(chosen, self.get_hf_config().template_version)  # type: ignore[arg-type]

    def video_layout(self, num_frames: int, template: str) -> list[int]:
        """The ids a clip of ``num_frames`` frames takes in the prompt, laid out as CogLens's processor does."""
        return clip_layout(self.get_tokenizer(), self.get_hf_config(), template, num_frames)[0]


class CogvlmDummyInputsBuilder(BaseDummyInputsBuilder[CogvlmProcessingInfo]):
    """The largest inputs vLLM profiles memory with: one image, or one clip of the most frames CogLens samples."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None) -> dict:
        size = self.info.get_hf_config().vision_config.image_size
        options = mm_options or {}
        if "video" in mm_counts:
            return {"video": self._get_dummy_videos(width=size, height=size, num_frames=DEFAULT_NUM_FRAMES,
                                                    num_videos=mm_counts["video"], overrides=options.get("video"))}
        return {"image": self._get_dummy_images(width=size, height=size, num_images=mm_counts.get("image", 0),
                                                overrides=options.get("image"))}


class CogvlmMultiModalProcessor(BaseMultiModalProcessor[CogvlmProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        size = self.info.get_hf_config().vision_config.image_size
        out: dict[str, Any] = {}
        if images := hf_data.get("images"):
            out["pixel_values"] = torch.stack([preprocess_image(image, size) for image in images])  # type: ignore[union-attr]
        if videos := hf_data.get("videos"):
            out["video_pixel_values"] = [_clip_frames(video, size) for video in videos]  # type: ignore[union-attr]
        return BatchFeature(out)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {"pixel_values": MultiModalFieldConfig.batched("image"),
                "video_pixel_values": MultiModalFieldConfig.batched("video")}

    def _postprocess_prompt(self, prompt: list[int]) -> list[int]:
        config = self.info.get_hf_config()
        if config.variant != COGVLM and config.image_token_id in prompt:  # (CogVLM-1's placeholder is <unk>)
            raise ValueError(
                f"the prompt already holds image placeholder ids ({config.image_token_id}); give the text only (or "
                "CogLens's ids without the image span): the plugin inserts the span after bos itself"
            )
        bos = config.bos_token_id
        return prompt if prompt[:1] == [bos] else [bos, *prompt]  # the span's anchor, as in every CogVLM prompt

    def _get_prompt_updates(
        self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        config = self.info.get_hf_config()
        after_bos = PromptIndexTargets.prefix([config.bos_token_id])
        if config.is_video:
            template = self.info.template(hf_processor_mm_kwargs)

            def clip(item_idx: int) -> PromptUpdateDetails:
                frames = out_mm_kwargs["video"][item_idx]["video_pixel_values"].data
                return PromptUpdateDetails.select_token_id(self.info.video_layout(len(frames), template),
                                                           config.image_token_id)

            return [PromptInsertion(modality="video", target=after_bos, insertion=clip)]
        span = PromptUpdateDetails.from_seq([config.image_token_id] * config.num_image_tokens)
        return [PromptInsertion(modality="image", target=after_bos, insertion=span)]


def _clip_frames(video: Any, image_size: int) -> torch.Tensor:
    """vLLM's video item (uint8 frames (T, H, W, C), possibly with its metadata) -> (T, 3, S, S) pixels."""
    frames = video[0] if isinstance(video, tuple) else video
    tensor = torch.from_numpy(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if tensor.dim() != 4 or tensor.shape[-1] != 3 or tensor.dtype != torch.uint8:
        raise ValueError(
            f"a CogVLM2-Video clip must be uint8 frames (T, H, W, 3), got {tuple(tensor.shape)} {tensor.dtype}"
        )
    return transform_clip(tensor.permute(3, 0, 1, 2), image_size)
