"""vLLM's ``/generate`` body (``vllm/entrypoints/api_server.py``): ``prompt``, ``stream`` and the sampling
fields of vLLM's ``SamplingParams`` at the top level (pydantic only).

``prompt`` may be a string or a list of typed parts as in the MindIE guides. Extensions: ``template``, and a
LoRA adapter of ``--adapter NAME=PATH`` by ``adapter_id`` or by naming it as ``model``; any other ``model`` is
ignored (vLLM's /generate has one model; MindIE's bodies name it loosely). The vLLM ``SamplingParams`` fields we
do not implement are refused by name (see ``wire.REFUSED``).
"""

from __future__ import annotations

from pydantic import Field

from ...engine import SamplingParams
from ..wire import AdapterId, ContentPart, Refused, ResponseModel, Seed, StopList, WireModel

DEFAULT_MAX_TOKENS = 16  # vLLM SamplingParams' default


class VLLMGenerateRequest(WireModel):
    model: str | None = None
    adapter_id: AdapterId
    prompt: str | list[ContentPart]
    stream: bool = False
    n: int = Field(default=1, ge=1)
    max_tokens: int | None = Field(default=DEFAULT_MAX_TOKENS, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=-1)  # -1 or 0: off
    repetition_penalty: float = Field(default=1.0, gt=0)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    seed: Seed | None = None
    stop: StopList = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    template: str | None = None
    best_of: Refused
    use_beam_search: Refused
    length_penalty: Refused
    min_p: Refused
    min_tokens: Refused
    bad_words: Refused
    allowed_token_ids: Refused
    include_stop_str_in_output: Refused
    skip_special_tokens: Refused
    spaces_between_special_tokens: Refused
    detokenize: Refused
    truncate_prompt_tokens: Refused
    guided_decoding: Refused
    logits_processors: Refused
    logit_bias: Refused
    logprobs: Refused
    prompt_logprobs: Refused

    def to_sampling_params(self, max_new_tokens: int) -> SamplingParams:
        return SamplingParams.from_temperature(
            self.temperature, max_new_tokens=max_new_tokens, top_k=max(self.top_k, 0), top_p=self.top_p,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, stop=list(self.stop), stop_token_ids=list(self.stop_token_ids),
            ignore_eos=self.ignore_eos, seed=self.seed,
        )


class GenerateResponse(ResponseModel):
    text: list[str]  # prompt + output of each choice, as vLLM returns it


class ErrorInfo(ResponseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(ResponseModel):
    error: ErrorInfo
