"""CogVLM / CogVLM2 / CogVLM2-Video as native transformers models (no remote code, no xformers, no triton).

Parity-checked against the outputs of THUDM's remote code (``shared/fixtures/parity``): same module names,
same routing, same position ids, same numerics in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
)
from transformers.utils import logging

from .configuration_cogvlm import Cogvlm2Config, Cogvlm2VideoConfig, CogvlmConfig
from .language import CogvlmDecoderLayer, CogvlmRMSNorm, RotaryEmbedding
from .routing import VISION_TOKEN_TYPE, build_position_ids, vision_expert_mask
from .vision import EVA2CLIPModel, PatchEmbedding

logger = logging.get_logger(__name__)

ImagesArg = Sequence[Sequence[torch.Tensor]] | None

# transformers 5.24 renamed the cache argument and output field from ``past_key_values`` to ``cache``
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class CogvlmModelOutputWithPast(BaseModelOutputWithPast):
    """``image_hidden_states``: the image features (boi, patches, eoi) that replaced the image placeholders."""

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class CogvlmCausalLMOutputWithPast(CausalLMOutputWithPast):
    """``image_hidden_states``: the image features (boi, patches, eoi) that replaced the image placeholders."""

    image_hidden_states: torch.FloatTensor | None = None


class ModelInputError(ValueError):
    """Inputs that do not fit the model (image slots vs images, missing positions...)."""


class CogvlmPreTrainedModel(PreTrainedModel):
    config_class = CogvlmConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    # accelerate's device_map never splits these (a split layer would shuttle activations mid-layer)
    _no_split_modules = ["CogvlmDecoderLayer", "EVA2CLIPTransformerLayer"]
    _supports_sdpa = True
    _skip_keys_device_placement = "past_key_values"
    supports_gradient_checkpointing = True  # the decoder and ViT layers are GradientCheckpointingLayers
    # THUDM's checkpoints store the rotary tables; a checkpoint without them (ours, or a fine-tune's) is complete
    _keys_to_ignore_on_load_missing = [r"rotary_emb\.inv_freq"]
    # Kept in full precision when quantizing, unless asked otherwise: the vision tower with its GLU adapter and
    # the LM head, where users saw quantization hurt most. Prefixes in transformers' skip-list syntax (matched at
    # a module boundary: "model.vision" is not the LM's vision experts); loading copies them into the
    # quantization config (`llm_int8_skip_modules` / `modules_to_not_convert`), which save_pretrained stores.
    # Not `_keep_in_fp32_modules`: transformers always adds those, which would forbid quantizing the tower and
    # refuse THUDM's int4 release (whose tower is quantized), and they upcast to float32 in float16.
    _skip_quantization_modules = ["model.vision", "lm_head"]

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' defaults (linears, embeddings, norms) plus CogVLM's own parameters and rotary table."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, RotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq(module.inv_freq.device))
        elif isinstance(module, EVA2CLIPModel):
            init.normal_(module.boi, std=std)
            init.normal_(module.eoi, std=std)
        elif isinstance(module, PatchEmbedding):
            init.normal_(module.cls_embedding, std=std)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):  # type: ignore[override]
        """Load a THUDM checkpoint folder as released (see :func:`coglens.modeling.loading.load_pretrained`)."""
        from .loading import load_pretrained

        return load_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)


class CogvlmModel(CogvlmPreTrainedModel):
    _skip_quantization_modules = ["vision"]  # the base model's names have no "model." prefix

    def __init__(self, config: CogvlmConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(CogvlmDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = CogvlmRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.vision = EVA2CLIPModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling | tuple:
        """Images (N, 3, S, S) through the vision tower, as transformers' VLMs return them: ``last_hidden_state``
        is the ViT's output (N, 1 + patches, vision hidden), ``pooler_output`` the LM-space features that replace
        the image placeholders (N, num_image_tokens, hidden; boi and eoi included), plus the ViT's
        ``hidden_states`` / ``attentions`` when asked for."""
        vision = self.config.vision_config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else (
            self.config.output_hidden_states or vision.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        hidden: list[torch.Tensor] | None = [] if output_hidden_states else None
        attentions: list[torch.Tensor] | None = [] if output_attentions else None
        tower = self.vision
        param = tower.patch_embedding.proj.weight
        pixels = pixel_values.to(device=execution_device(tower), dtype=param.dtype)
        vit = tower.transformer(tower.patch_embedding(pixels), hidden, attentions)
        out = BaseModelOutputWithPooling(
            last_hidden_state=vit, pooler_output=tower.project(vit),
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )
        return out if _wants_dict(return_dict, self.config) else out.to_tuple()

    def encode_images(self, images: ImagesArg) -> torch.Tensor:
        """All images of the batch (rows in order) -> (total image tokens, hidden).

        An entry may be one image (3, S, S), a stack of images (N, 3, S, S) or a video clip (T, 3, S, S); every
        frame is encoded as an image.
        """
        pixels = [img if img.dim() == 4 else img.unsqueeze(0) for row in images or [] for img in row]
        if not pixels:
            return torch.empty(0, self.config.hidden_size, device=self.embed_tokens.weight.device)
        size = self.config.vision_config.image_size
        for p in pixels:
            if tuple(p.shape[-3:]) != (3, size, size):
                raise ModelInputError(
                    f"image tensor of shape {tuple(p.shape)} does not fit this model: it expects (3, {size}, {size}) "
                    "pixels (or (T, 3, S, S) for a video); preprocess images with CogvlmProcessor"
                )
        param = self.vision.patch_embedding.proj.weight
        batch = torch.cat(pixels).to(device=execution_device(self.vision), dtype=param.dtype)
        return self.vision(batch).flatten(0, 1)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        images: ImagesArg = None,
        token_type_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> CogvlmModelOutputWithPast | tuple:
        """``images``: one list of (3, S, S) images or (T, 3, S, S) clips per row; or ``pixel_values``
        (B, 3, S, S) / (B, T, 3, S, S): one image or clip per row. ``cache`` is transformers' newer name for
        ``past_key_values``; either is accepted."""
        past_key_values = _one_cache(past_key_values, cache)
        images = _images_argument(images, pixel_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ModelInputError("pass exactly one of input_ids or inputs_embeds")
        ref = input_ids if input_ids is not None else inputs_embeds
        b, n = ref.shape[:2]
        device = ref.device
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        # no types: all language, decided without reading a tensor (a compiled decode step cannot branch on data)
        has_vision = token_type_ids is not None and bool((token_type_ids == VISION_TOKEN_TYPE).any())
        if token_type_ids is None:
            token_type_ids = torch.zeros(b, n, dtype=torch.long, device=device)
        image_features = None
        # given embeddings take the image features only when images come along (as transformers' VLMs do);
        # without images they are taken to hold them already
        merge_images = has_vision and (inputs_embeds is None or images is not None)
        if inputs_embeds is None:
            # ids in image spans are placeholders, overwritten below; keep them inside the vocabulary
            ids = input_ids.masked_fill(token_type_ids == VISION_TOKEN_TYPE, 0) if has_vision else input_ids
            inputs_embeds = self.embed_tokens(ids)
        if merge_images:
            image_features = self._image_features_for(images, token_type_ids)
            inputs_embeds = inputs_embeds.index_put(
                (token_type_ids == VISION_TOKEN_TYPE,), image_features.to(inputs_embeds.dtype)
            )
        if attention_mask is None:
            attention_mask = torch.ones(b, past_len + n, dtype=torch.long, device=device)
        if position_ids is None:
            position_ids = self._default_position_ids(token_type_ids, attention_mask, past_key_values, past_len, n)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if use_cache and self.training and torch.is_grad_enabled() and any(
            getattr(layer, "gradient_checkpointing", False) for layer in self.layers
        ):
            logger.warning_once("use_cache=True is incompatible with gradient checkpointing; using use_cache=False")
            use_cache = False
        if use_cache:
            if past_key_values is None:
                past_key_values = DynamicCache()
            # remembered so a caller's manual decode loop needs no position ids
            past_key_values.cogvlm_next_position = position_ids[:, -1] + 1
        else:
            past_key_values = None
        vision_mask = vision_expert_mask(token_type_ids) if has_vision and self.config.has_vision_experts else None
        bias = attention_bias(attention_mask, n, past_len, inputs_embeds.dtype)

        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        attentions: list[torch.Tensor] | None = [] if output_attentions else None
        hidden = inputs_embeds
        all_hidden: tuple[torch.Tensor, ...] | None = () if output_hidden_states else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden += (hidden,)
            hidden = layer(hidden, vision_mask, position_ids, bias, past_key_values, attentions)
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden += (hidden,)
        out = CogvlmModelOutputWithPast(
            last_hidden_state=hidden, hidden_states=all_hidden,
            attentions=tuple(attentions) if attentions is not None else None,
            image_hidden_states=image_features, **{CACHE_FIELD: past_key_values},
        )
        return out if _wants_dict(return_dict, self.config) else out.to_tuple()

    def _image_features_for(self, images: ImagesArg, token_type_ids: torch.Tensor) -> torch.Tensor:
        slots = int((token_type_ids == VISION_TOKEN_TYPE).sum())
        if not images or not any(len(row) for row in images):
            raise ModelInputError(
                f"token_type_ids mark {slots} vision positions but no images were given; pass images=[[pixels], ...]"
                " (one list per row), pixel_values=(B, 3, S, S), or mark the positions as language (0)"
            )
        features = self.encode_images(images)
        if features.shape[0] != slots:
            n_img = sum(img.shape[0] if img.dim() == 4 else 1 for row in images for img in row)
            raise ModelInputError(
                f"the batch has {slots} vision-typed positions but its {n_img} image(s)/frame(s) give "
                f"{features.shape[0]} feature tokens ({self.config.num_image_tokens} each); build inputs with "
                "CogvlmProcessor or build_conversation_input_ids so that every image gets one span"
            )
        return features

    @staticmethod
    def _default_position_ids(
        token_type_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Cache | None, past_len: int, n: int
    ) -> torch.Tensor:
        if past_len == 0:
            return build_position_ids(token_type_ids, attention_mask)
        start = getattr(cache, "cogvlm_next_position", None)
        if start is None:
            raise ModelInputError(
                "position_ids are needed to continue from a cache that coglens did not fill: CogVLM compresses "
                "each image to 3 positions, so they cannot be inferred from the cache length"
            )
        return start.unsqueeze(1) + torch.arange(n, device=start.device)


def _one_cache(past_key_values: Cache | None, cache: Cache | None) -> Cache | None:
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ModelInputError("pass the KV cache once, as cache= or past_key_values=, not both")
    chosen = cache if cache is not None else past_key_values
    if getattr(chosen, "is_compileable", False):
        raise ModelInputError(
            f"transformers' {type(chosen).__name__} (cache_implementation='static' and the like) is not supported by "
            "CogVLM models: generate() runs with the default dynamic cache; for a static-cache, compiled decode use "
            "coglens's engine (Engine(..., compile=True), `coglens serve --compile`)"
        )
    return chosen


def _images_argument(images: ImagesArg, pixel_values: torch.Tensor | None) -> ImagesArg:
    """``pixel_values`` (one image or clip per row, HF's batched form) as the per-row ``images`` lists."""
    if pixel_values is None:
        return images
    if images is not None:
        raise ModelInputError("pass images either as images=[[...], ...] or as pixel_values, not both")
    if pixel_values.dim() not in (4, 5):
        raise ModelInputError(
            f"pixel_values of shape {tuple(pixel_values.shape)}: expected (B, 3, S, S) images or (B, T, 3, S, S) "
            "clips, one per row"
        )
    return [[row] for row in pixel_values]


def _wants_dict(return_dict: bool | None, config: CogvlmConfig) -> bool:
    return return_dict if return_dict is not None else getattr(config, "return_dict", True)


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its weights' device, or accelerate's execution device when they are offloaded."""
    hook = getattr(module, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    device = next(module.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


def attention_bias(attention_mask: torch.Tensor, q_len: int, past_len: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive (B, 1, q, k) mask, or None when SDPA's own causal path is exact (no padding, no cache offset).

    Masked cells get finfo.min, and cells that are both padded and in the future get -inf (min + min), as the
    original does: a pad query row then still has finite weights and never produces NaN.
    """
    # the shortcut reads the mask on the host; a compiled step always builds the bias (same result)
    if (past_len == 0 or q_len == 1) and not torch.compiler.is_compiling() and bool(attention_mask.all()):
        return None
    k_len = attention_mask.shape[1]
    device = attention_mask.device
    big = torch.finfo(dtype).min
    q_pos = torch.arange(past_len, past_len + q_len, device=device).view(-1, 1)
    future = torch.arange(k_len, device=device).view(1, -1) > q_pos
    bias = torch.zeros(q_len, k_len, dtype=dtype, device=device).masked_fill(future, big)
    pad = torch.zeros(attention_mask.shape, dtype=dtype, device=device).masked_fill(~attention_mask.bool(), big)
    return bias.view(1, 1, q_len, k_len) + pad.view(-1, 1, 1, k_len)


class CogvlmForCausalLM(CogvlmPreTrainedModel, GenerationMixin):
    def __init__(self, config: CogvlmConfig) -> None:
        super().__init__(config)
        self.model = CogvlmModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> BaseModelOutputWithPooling | tuple:
        return self.model.get_image_features(pixel_values, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        images: ImagesArg = None,
        token_type_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        pixel_values: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> CogvlmCausalLMOutputWithPast | tuple:
        out = self.model(
            input_ids=input_ids, images=images, token_type_ids=token_type_ids, attention_mask=attention_mask,
            position_ids=position_ids, past_key_values=_one_cache(past_key_values, cache),
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, pixel_values=pixel_values,
        )
        hidden = out.last_hidden_state
        # an int keeps the last N positions (0 = all), a tensor picks positions, as transformers' models do
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep]).float()  # the original casts logits to float32
        loss = None
        if labels is not None:
            # transformers' causal-LM loss: labels shifted by one, -100 ignored; it also honours the Trainer's
            # num_items_in_batch (gradient accumulation) and pre-shifted shift_labels (sequence parallelism)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        result = CogvlmCausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions,
            image_hidden_states=out.image_hidden_states, **{CACHE_FIELD: getattr(out, CACHE_FIELD)},
        )
        return result if _wants_dict(return_dict, self.config) else result.to_tuple()

    # --- generation: transformers' own input preparation, plus what CogVLM needs ----------------------------

    def _prepare_attention_mask_for_generation(self, inputs_tensor: torch.Tensor, *args: Any, **kwargs: Any):
        # placeholder ids in image spans may equal the pad id, so never infer a mask from pad ids (as the original)
        return torch.ones(inputs_tensor.shape[:2], dtype=torch.long, device=inputs_tensor.device)

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, *args: Any, inputs_embeds: torch.Tensor | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """transformers slices the new tokens and passes the cache; CogVLM adds three things to that:
        compressed position ids (computed over the whole sequence, then sliced like the ids), and images only
        while the cache is empty (decode steps never run the vision tower again). ``inputs_embeds`` is named so
        that ``generate`` accepts it (it looks for the parameter)."""
        kwargs["inputs_embeds"] = inputs_embeds
        images = kwargs.pop("images", None)
        pixel_values = kwargs.pop("pixel_values", None)
        kwargs.pop("position_ids", None)  # ours are derived from the token types below, never extended by +1
        token_type_ids = kwargs.get("token_type_ids")
        attention_mask = kwargs.get("attention_mask")
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        cache = inputs.get(CACHE_FIELD)
        fed = (inputs["input_ids"] if inputs.get("input_ids") is not None else inputs["inputs_embeds"]).shape[1]
        full_mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        if token_type_ids is None:  # all language, over the whole sequence: the cached part and what is fed now
            # (input_ids alone may not span it: a prompt given as inputs_embeds is not in them)
            past = cache.get_seq_length() if cache is not None else 0
            length = full_mask.shape[1] if full_mask is not None else past + fed
            token_type_ids = torch.zeros(input_ids.shape[0], length, dtype=torch.long, device=input_ids.device)
        inputs["position_ids"] = build_position_ids(token_type_ids, full_mask)[:, -fed:]
        if cache is None or cache.get_seq_length() == 0:
            inputs["images"], inputs["pixel_values"] = images, pixel_values
        return inputs

    def _expand_inputs_for_generation(  # type: ignore[override]
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids: torch.LongTensor | None = None,
        **model_kwargs: Any,
    ) -> tuple[torch.LongTensor | None, dict[str, Any]]:
        """Beam search and num_return_sequences repeat every row; transformers repeats tensors only, so the
        per-row ``images`` lists are repeated here the same way (row i becomes rows i*n ... i*n+n-1)."""
        images = model_kwargs.pop("images", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if images is not None:
            model_kwargs["images"] = [row for row in images for _ in range(expand_size)]
        return input_ids, model_kwargs

    def _update_model_kwargs_for_generation(  # type: ignore[override]
        self, outputs: Any, model_kwargs: dict[str, Any], is_encoder_decoder: bool = False, num_new_tokens: int = 1
    ) -> dict[str, Any]:
        types = model_kwargs.get("token_type_ids")
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        if types is not None:  # generated tokens are language tokens (the base class would repeat the last type)
            model_kwargs["token_type_ids"] = torch.cat([types, types.new_zeros(types.shape[0], num_new_tokens)], 1)
        return model_kwargs

    def build_conversation_input_ids(self, tokenizer: Any, **kwargs: Any) -> dict[str, Any]:
        """The model-card method: same arguments and return dict as THUDM's (see ``coglens.processing``)."""
        from ..processing.conversation import build_conversation_input_ids

        return build_conversation_input_ids(tokenizer, config=self.config, **kwargs)


class Cogvlm2Model(CogvlmModel):
    config_class = Cogvlm2Config


class Cogvlm2VideoModel(CogvlmModel):
    config_class = Cogvlm2VideoConfig


class Cogvlm2ForCausalLM(CogvlmForCausalLM):
    config_class = Cogvlm2Config


class Cogvlm2VideoForCausalLM(CogvlmForCausalLM):
    config_class = Cogvlm2VideoConfig
