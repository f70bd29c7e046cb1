"""llama.cpp's speed on a CogVLM-1 checkpoint folder: convert it to GGUF, then time ``llama-bench`` on it.

Build llama.cpp once (CPU only; about 17 minutes on 2 cores). The llama-cpp-python sdist on PyPI carries the full
llama.cpp tree in ``vendor/llama.cpp``::

    mkdir -p /tmp/llamacpp && cd /tmp/llamacpp
    pip download --no-binary :all: --no-deps llama-cpp-python -d dl
    tar xzf dl/llama_cpp_python-*.tar.gz && mv llama_cpp_python-*/vendor/llama.cpp src
    cmake -S src -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DLLAMA_CURL=OFF \\
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
    cmake --build build --config Release -j2 --target llama-bench        # -> build/bin/llama-bench

The converter (``src/convert_hf_to_gguf.py``) needs torch, numpy, sentencepiece, safetensors and transformers, and
imports gguf from the tree's own ``gguf-py``. CogLens's venv has all of these, so ``python=sys.executable`` works
there; llama.cpp's pinned set lives in its own venv::

    python3 -m venv venv && venv/bin/pip install torch "numpy~=2.2.6" "sentencepiece>=0.1.98,<0.3.0" \\
        transformers==4.57.6 "protobuf>=4.21.0,<5.0.0" safetensors ./src/gguf-py

Then, with llama.cpp's F32 against our float32 and its F16 against our bfloat16::

    gguf = convert(checkpoint, Path("/tmp/llamacpp/src"), "f32", out_dir)
    decode = bench(Path("/tmp/llamacpp/build/bin/llama-bench"), gguf, threads=2, prompt=0, generate=64)
    prefill = bench(Path("/tmp/llamacpp/build/bin/llama-bench"), gguf, threads=2, prompt=100, generate=0)

Only the text model is converted (vision experts included); the GGUF's vocabulary is a placeholder, so it is good
for speed, not for text.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

OUTTYPES = ("f32", "f16", "bf16", "q8_0")

# Runs convert_hf_to_gguf.py (argv[1]) on the prepared folder (argv[2]) with two fixes that llama.cpp's converter
# needs for THUDM's CogVLM-1 layout.
_CONVERTER_SHIM = r"""
import io, os, runpy, sys
from pathlib import Path

script, model = Path(sys.argv[1]), Path(sys.argv[2])
sys.argv = sys.argv[1:]
sys.path[:0] = [str(script.parent)] + ([] if "NO_LOCAL_GGUF" in os.environ else [str(script.parent / "gguf-py")])

# The converter reads the vocabulary from tokenizer.model and pads it with [PAD] tokens up to vocab_size, so a
# 300-piece byte-fallback BPE with Llama's <unk>/<s>/</s> ids stands in for Vicuna's when the folder has none.
if not (model / "tokenizer.model").exists():
    from sentencepiece import SentencePieceTrainer
    buf = io.BytesIO()
    SentencePieceTrainer.train(sentence_iterator=iter(["a placeholder vocabulary for a speed benchmark"] * 8),
                               model_writer=buf, model_type="bpe", vocab_size=300, hard_vocab_limit=False,
                               byte_fallback=True, num_threads=1, minloglevel=2)
    (model / "tokenizer.model").write_bytes(buf.getvalue())

# TextModel.filter_tensors drops every name containing "vision_" (meant for vision towers), which takes the
# vision experts (mlp.vision_mlp.*, self_attn.vision_expert_*) with it; llama.cpp then fails to load the file
# with "tensor 'blk.0.vis_attn_qkv.weight' not found".
from conversion.base import ModelBase
from conversion.cogvlm import CogVLMModel

text_filter = CogVLMModel.filter_tensors

def keep_vision_experts(cls, item):
    if ".vision_mlp." in item[0] or ".vision_expert_" in item[0]:
        return ModelBase.filter_tensors.__func__(cls, item)
    return text_filter(item)

CogVLMModel.filter_tensors = classmethod(keep_vision_experts)
runpy.run_path(str(script), run_name="__main__")
"""


def convert(
    checkpoint: Path, llama_cpp: Path, outtype: str, out: Path, *, python: str | Path = sys.executable
) -> Path:
    """Convert ``checkpoint`` (a CogVLM-1 folder) into ``out/<folder name>-<outtype>.gguf`` and return its path.

    ``llama_cpp`` is the llama.cpp source tree. The converter runs under ``python`` (see the module docstring for
    the packages it needs) on a temporary copy of the folder: weights symlinked, and ``config.json`` given THUDM's
    architecture name and ``num_key_value_heads``, which llama.cpp's converter reads. The given folder is not
    touched.
    """
    script = llama_cpp / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: pass the llama.cpp source tree (the sdist's vendor/llama.cpp)")
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    config_file = checkpoint / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: pass a checkpoint folder written by save_pretrained")
    config = json.loads(config_file.read_text())
    if not isinstance(config.get("vision_config"), dict):
        raise ValueError(f"{config_file} has no vision_config dict: not a CogVLM checkpoint")
    heads, kv_heads = config["num_attention_heads"], config.get("num_multi_query_heads")
    if kv_heads not in (None, heads):
        # src/models/cogvlm.cpp splits the fused QKV into three equal parts.
        raise ValueError(f"{config_file}: num_multi_query_heads is {kv_heads} (grouped-query attention, as in "
                         f"CogVLM2), but llama.cpp's CogVLM supports only CogVLM-1 (as many K/V heads as query heads)")
    # THUDM's name: CogLens writes its own class name, and llama.cpp registers its converter under THUDM's.
    config.update(architectures=["CogVLMForCausalLM"], num_key_value_heads=heads)

    out.mkdir(parents=True, exist_ok=True)
    gguf = out / f"{checkpoint.resolve().name}-{outtype}.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        model.mkdir()
        for item in checkpoint.iterdir():
            if item.name != "config.json":
                (model / item.name).symlink_to(item.resolve())
        (model / "config.json").write_text(json.dumps(config, indent=2))
        args = [str(script), str(model), "--outtype", outtype, "--outfile", str(gguf)]
        done = subprocess.run([str(python), "-c", _CONVERTER_SHIM, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {checkpoint} (python {python}):\n{done.stderr[-3000:]}")
    return gguf


def bench(llama_bench: Path, gguf: Path, threads: int, prompt: int, generate: int) -> float:
    """Tokens/s of one llama-bench test: prefill (``prompt`` > 0, ``generate`` 0) or decode (the other way round).

    llama-bench times ``generate`` tokens one at a time from an empty context, 5 repetitions, and reports the mean.
    """
    if (prompt > 0) == (generate > 0):
        raise ValueError(f"give one of prompt and generate > 0 (prefill or decode), got prompt={prompt}, "
                         f"generate={generate}")
    cmd = [str(llama_bench), "-m", str(gguf), "-t", str(threads), "-p", str(prompt), "-n", str(generate), "-o", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"llama-bench failed on {gguf}:\n{done.stderr[-3000:]}")
    (result,) = json.loads(done.stdout)
    return float(result["avg_ts"])
