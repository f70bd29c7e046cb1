"""Stop strings on the wire: a string or a list, never an empty one (it would end every answer at once)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from coglens.serve.openai.protocol import ChatCompletionRequest
from coglens.serve.tgi.protocol import TGIParameters
from coglens.serve.triton.protocol import TritonParameters
from coglens.serve.vllm.protocol import VLLMGenerateRequest


@pytest.mark.parametrize("build", [
    lambda stop: ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], stop=stop).stop,
    lambda stop: TGIParameters(stop=stop).stop,
    lambda stop: TritonParameters(stop=stop).stop,
    lambda stop: VLLMGenerateRequest(prompt="hi", stop=stop).stop,
])
def test_stop_strings_every_protocol(build):
    assert build("If") == ["If"]
    assert build(["a", "b"]) == ["a", "b"]
    assert build(None) == []
    with pytest.raises(ValidationError, match="must not be empty"):
        build("")
    with pytest.raises(ValidationError, match="must not be empty"):
        build(["ok", ""])
