"""Quantized loading (issue 14): every CPU scheme on every variant, the default skip list, pre-quantized
checkpoints (ours, and one laid out like THUDM's int4 release), quality against the unquantized model, and the
errors a user meets. Expectations come from the libraries themselves (their classes and quantize functions), the
unquantized model's outputs, and hand-computed values."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from testkit import edit_config
from torchao.quantization.quant_api import Int8Tensor
from transformers import BitsAndBytesConfig, TorchAoConfig

from coglens.modeling import CheckpointError, CogvlmForCausalLM, CogvlmModel
from coglens.modeling.quantization import (
    INSTALL_HINT,
    SCHEMES,
    QuantizationError,
    compare_next_token,
    greedy_match_length,
    quantization_config,
    quantize_checkpoint,
)
from coglens.processing.conversation import build_conversation_input_ids
from coglens.processing.tokenizer import load_tokenizer
from coglens.tiny import tiny_model_path

CPU_SCHEMES = ("int8", "nf4", "fp4")  # int4 needs CUDA (torchao has no CPU kernel for it)
VARIANTS = ("cogvlm", "cogvlm2", "cogvlm2-video")
NEW_TOKENS = 8


def _quantized(path: Path, scheme: str, **options) -> CogvlmForCausalLM:
    return CogvlmForCausalLM.from_pretrained(path, quantization_config=quantization_config(scheme, device="cpu",
                                                                                          **options))


def _is_quantized(linear: torch.nn.Module, scheme: str) -> bool:
    """What each library turns a linear into: bitsandbytes a Linear4bit of that type, torchao an nn.Linear
    whose weight is its Int8Tensor."""
    if scheme == "int8":
        return type(linear) is torch.nn.Linear and isinstance(linear.weight, Int8Tensor)
    return isinstance(linear, bnb.nn.Linear4bit) and linear.weight.quant_type == scheme


def _linears(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def _tower_and_head(model: CogvlmForCausalLM) -> dict[str, torch.nn.Module]:
    """The vision tower's linears (ViT and GLU adapter) and lm_head."""
    return {**{f"model.vision.{n}": m for n, m in _linears(model.model.vision).items()}, "lm_head": model.lm_head}


def _language_linears(model: CogvlmForCausalLM) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in _linears(model).items() if n.startswith("model.layers.")}


# --- fixed image + text prompts -----------------------------------------------------------------------------------

QUERIES = ("Describe the image.", "What color is the square?", "How many lines are there?", "Read the text.")


def _image(i: int) -> Image.Image:
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[..., i % 3] = 40 * (i + 1)
    pixels[8 * i: 8 * i + 24, 10:40] = 255
    return Image.fromarray(pixels)


def _prompts(model: CogvlmForCausalLM, path: Path) -> dict:
    """The fixed prompts as one left-padded batch (one image, or a two-frame clip for the video model, per row)."""
    tokenizer = load_tokenizer(path, None, config=model.config)
    rows = []
    for i, query in enumerate(QUERIES):
        clip = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(i))  # two preprocessed frames
        rows.append(build_conversation_input_ids(tokenizer, config=model.config, query=query,
                                                 images=[clip if model.config.is_video else _image(i)]))
    width = max(len(r["input_ids"]) for r in rows)

    def left_pad(values: torch.Tensor) -> torch.Tensor:
        return torch.cat([values.new_zeros(width - len(values)), values])

    return {"input_ids": torch.stack([left_pad(r["input_ids"]) for r in rows]),
            "token_type_ids": torch.stack([left_pad(r["token_type_ids"]) for r in rows]),
            "attention_mask": torch.stack([left_pad(torch.ones_like(r["input_ids"])) for r in rows]),
            "images": [r["images"] for r in rows]}


def _first(prompts: dict) -> dict:
    return {k: v[:1] for k, v in prompts.items()}


@torch.no_grad()
def _logits(model: CogvlmForCausalLM, prompts: dict) -> torch.Tensor:
    """Next-token logits at every real (unpadded) prompt position."""
    return model(**prompts).logits[prompts["attention_mask"].bool()]


@torch.no_grad()
def _run(model: CogvlmForCausalLM, prompts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts' next-token logits, and each prompt's greedy continuation."""
    out = model.generate(**prompts, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                         pad_token_id=0)
    return _logits(model, prompts), out[:, prompts["input_ids"].shape[1]:]


# --- every CPU scheme, every variant ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scheme", CPU_SCHEMES)
def test_scheme_loads_thudm_checkpoint_quantizes_the_language_model_and_generates(variant, scheme):
    model = _quantized(tiny_model_path(variant), scheme)  # THUDM's folder layout, sharded
    language = _language_linears(model)
    assert language and all(_is_quantized(m, scheme) for m in language.values())
    for name, linear in _tower_and_head(model).items():  # default: tower, adapter and head stay full precision
        assert type(linear) is torch.nn.Linear and type(linear.weight) is torch.nn.Parameter, name
        assert linear.weight.dtype == torch.float32, name
    prompt = _first(_prompts(model, tiny_model_path(variant)))
    out = model.generate(**prompt, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 3)
    assert int(out[0, -3:].max()) < model.config.vocab_size


@pytest.mark.parametrize("scheme", CPU_SCHEMES)
def test_quantize_vision_quantizes_tower_adapter_and_head_too(scheme):
    model = _quantized(tiny_model_path("cogvlm2"), scheme, quantize_vision=True)
    tower = _tower_and_head(model)
    assert {"model.vision.linear_proj.linear_proj", "model.vision.linear_proj.gate_proj", "lm_head"} <= set(tower)
    assert all(_is_quantized(m, scheme) for m in [*tower.values(), *_language_linears(model).values()])
    assert model.config.quantization_config.to_dict().get(
        "llm_int8_skip_modules" if scheme != "int8" else "modules_to_not_convert") == []


def test_skip_list_is_the_class_declaration_written_into_the_config():
    """A user's own config without a skip list gets the class's; the base model's names have no "model."."""
    base = CogvlmModel.from_pretrained(tiny_model_path("cogvlm2"),
                                       quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    assert type(base.vision.linear_proj.linear_proj) is torch.nn.Linear
    assert isinstance(base.layers[0].mlp.language_mlp.up_proj, bnb.nn.Linear4bit)
    assert base.config.quantization_config.llm_int8_skip_modules == CogvlmModel._skip_quantization_modules
    as_dict = CogvlmForCausalLM.from_pretrained(tiny_model_path("cogvlm2"), quantization_config={"load_in_4bit": True})
    assert isinstance(as_dict.model.layers[0].mlp.language_mlp.up_proj, bnb.nn.Linear4bit)
    assert type(as_dict.lm_head) is torch.nn.Linear
    head = CogvlmForCausalLM.from_pretrained(tiny_model_path("cogvlm2"), load_in_8bit=True)  # the shorthand
    assert isinstance(head.model.layers[0].self_attn.language_expert_dense, bnb.nn.Linear8bitLt)
    assert type(head.lm_head) is torch.nn.Linear and type(head.model.vision.linear_proj.linear_proj) is torch.nn.Linear
    assert head.config.quantization_config.llm_int8_skip_modules == ["model.vision", "lm_head"]
    # an explicit list is the caller's: here only the head is kept
    mine = TorchAoConfig(quantization_config("int8", device="cpu").quant_type, modules_to_not_convert=["lm_head"])
    model = CogvlmForCausalLM.from_pretrained(tiny_model_path("cogvlm2"), quantization_config=mine)
    assert _is_quantized(model.model.vision.linear_proj.linear_proj, "int8")
    assert not _is_quantized(model.lm_head, "int8")


# --- pre-quantized checkpoints ----------------------------------------------------------------------------------


@contextmanager
def quantize_calls() -> Iterator[list[mock.MagicMock]]:
    """Count the calls of every quantize entry point of both libraries (they still run)."""
    entry_points = [(bnb.functional, "quantize_4bit"), (bnb.functional, "int8_vectorwise_quant"),
                    (Int8Tensor, "from_hp")]
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(mock.patch.object(owner, name, wraps=getattr(owner, name)))
               for owner, name in entry_points]


def _count(calls: list[mock.MagicMock]) -> int:
    return sum(c.call_count for c in calls)


@pytest.mark.parametrize("scheme", CPU_SCHEMES)
def test_saved_quantized_checkpoint_loads_as_saved_without_quantizing_again(scheme, tmp_path):
    source = tiny_model_path("cogvlm2")
    folder = quantize_checkpoint(source, tmp_path / "q", scheme, device="cpu")
    in_memory = _quantized(source, scheme)
    with quantize_calls() as calls:  # the counters do see a quantizing load
        _quantized(source, scheme)
    assert _count(calls) == len(_language_linears(in_memory))

    saved = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == ("torchao" if scheme == "int8" else "bitsandbytes")
    assert (folder / "tokenizer.json").is_file()  # the folder serves and chats as it is
    # each quantized linear is stored as integers (plus small scales): no float tensor of its weight's size
    weight_size = {n: m.weight.shape.numel() for n, m in _linears(CogvlmForCausalLM.from_pretrained(source)).items()}
    with safe_open(folder / "model.safetensors", "pt") as f:
        stored = {k: (f.get_slice(k).get_dtype(), np.prod(f.get_slice(k).get_shape())) for k in f.keys()}  # noqa: SIM118
    for name in _language_linears(in_memory):
        parts = [(dtype, size) for key, (dtype, size) in stored.items() if key.startswith(name + ".weight")
                 or key.startswith(name + "._weight")]
        assert any(dtype in ("I8", "U8") for dtype, _ in parts), (name, parts)
        assert all(dtype in ("I8", "U8") or size < weight_size[name] // 8 for dtype, size in parts), (name, parts)
    assert stored["lm_head.weight"] == ("F32", weight_size["lm_head"])

    with quantize_calls() as calls:
        loaded = CogvlmForCausalLM.from_pretrained(folder)
    assert _count(calls) == 0
    assert all(_is_quantized(m, scheme) for m in _language_linears(loaded).values())
    prompts = _prompts(loaded, source)
    torch.testing.assert_close(_logits(loaded, prompts), _logits(in_memory, prompts), rtol=0, atol=0)
    with pytest.raises(QuantizationError, match="already quantized"):
        CogvlmForCausalLM.from_pretrained(folder, quantization_config=quantization_config("nf4", device="cpu"))


def test_thudm_int4_release_layout_loads_with_its_quantized_tower(tmp_path):
    """THUDM's cogvlm2-llama3-chat-19B-int4: bitsandbytes NF4 with ``llm_int8_skip_modules: null`` (transformers'
    default then keeps only lm_head), THUDM's config fields, no model_type. Built the same way: quantize with the
    head kept, save, then write THUDM's config."""
    source = tiny_model_path("cogvlm2")
    thudm = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                               llm_int8_skip_modules=["lm_head"])
    reference = CogvlmForCausalLM.from_pretrained(source, quantization_config=thudm)
    reference.save_pretrained(tmp_path)

    def as_thudm(config: dict) -> None:
        for key in ("model_type", "variant", "use_vision_experts", "transformers_version", "dtype"):
            config.pop(key, None)
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_cogvlm.CogVLMForCausalLM"}
        config["torch_dtype"] = "float32"
        config["quantization_config"] = {
            "_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": "bfloat16",
            "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False,
            "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
            "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0, "load_in_4bit": True, "load_in_8bit": False,
            "quant_method": "bitsandbytes",
        }

    edit_config(tmp_path, as_thudm)
    with quantize_calls() as calls:
        loaded = CogvlmForCausalLM.from_pretrained(tmp_path)
    assert _count(calls) == 0
    assert loaded.config.variant == "cogvlm2"
    assert isinstance(loaded.model.vision.linear_proj.linear_proj, bnb.nn.Linear4bit)  # as stored
    assert type(loaded.lm_head) is torch.nn.Linear
    prompts = _prompts(loaded, source)
    torch.testing.assert_close(_logits(loaded, prompts), _logits(reference, prompts), rtol=0, atol=0)


# --- quality against the unquantized model ----------------------------------------------------------------------

# Measured on the tiny CogVLM2 (4 image prompts, 74 positions, 8 greedy tokens each), x86 CPU, bnb 0.50 / torchao
# 0.18: top-1 / KL / greedy tokens matched of 32: int8 1.000 / 0.001 / 27; nf4 0.57 / 0.21 / 6; fp4 0.58 / 0.35 / 5.
# 4-bit is far worse here than on a real model: the tiny model's 64-wide random weights fill whole quantization
# blocks with Gaussian noise.
BOUNDS = {"int8": (0.9, 0.01, 16), "nf4": (0.4, 0.4, 0), "fp4": (0.4, 0.6, 0)}  # top-1 >=, KL <=, greedy total >=


@pytest.fixture(scope="module")
def reference():
    path = tiny_model_path("cogvlm2")
    model = CogvlmForCausalLM.from_pretrained(path)
    prompts = _prompts(model, path)
    return path, prompts, _run(model, prompts)


@pytest.mark.parametrize("scheme", CPU_SCHEMES)
def test_quality_against_the_unquantized_model(scheme, reference):
    path, prompts, (ref_logits, ref_tokens) = reference
    logits, tokens = _run(_quantized(path, scheme), prompts)
    quality = compare_next_token(ref_logits, logits)
    matched = sum(greedy_match_length(a, b) for a, b in zip(ref_tokens, tokens, strict=True))
    top1, kl, greedy = BOUNDS[scheme]
    assert quality["top1_agreement"] >= top1 and quality["kl_mean"] <= kl and matched >= greedy, (quality, matched)
    # keeping the tower and head in full precision is what keeps the error down (measured KL: int8 0.001 vs
    # 0.005, nf4 0.21 vs 0.53, fp4 0.35 vs 0.93)
    everything = _logits(_quantized(path, scheme, quantize_vision=True), prompts)
    assert compare_next_token(ref_logits, everything)["kl_mean"] > quality["kl_mean"]


def test_compare_next_token_and_greedy_match_against_hand_computed_values():
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    test = torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1]]))
    out = compare_next_token(ref, test)
    # position 0: 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3); position 1: 0; argmax 0 vs 1, then 0 vs 0
    assert out["kl_max"] == pytest.approx(0.5 * np.log(4 / 3), abs=1e-6)
    assert out["kl_mean"] == pytest.approx(0.25 * np.log(4 / 3), abs=1e-6)
    assert out["top1_agreement"] == 0.5
    assert compare_next_token(ref, ref) == {"top1_agreement": 1.0, "kl_mean": 0.0, "kl_max": 0.0}
    assert greedy_match_length([1, 2, 3], torch.tensor([1, 2, 4])) == 2
    assert greedy_match_length([5], [6]) == 0 and greedy_match_length([1, 2], [1, 2, 3]) == 2
    with pytest.raises(ValueError, match="different shapes"):
        compare_next_token(ref, test[:1])


# --- configs per device, and errors ------------------------------------------------------------------------------


def test_configs_per_device():
    """The documented choice: CUDA runs bitsandbytes 8-bit and torchao int4 (tinygemm, bf16); a CPU torchao int8."""
    assert SCHEMES == ("int8", "int4", "nf4", "fp4")
    cuda8 = quantization_config("int8", device="cuda:1")
    assert isinstance(cuda8, BitsAndBytesConfig) and cuda8.load_in_8bit and cuda8.llm_int8_skip_modules is None
    int4 = quantization_config("int4", device=torch.device("cuda"))
    assert isinstance(int4, TorchAoConfig) and type(int4.quant_type).__name__ == "Int4WeightOnlyConfig"
    assert str(int4.quant_type.int4_packing_format).endswith("tile_packed_to_4d")
    cpu8 = quantization_config("int8", device="cpu")
    assert isinstance(cpu8, TorchAoConfig) and type(cpu8.quant_type).__name__ == "Int8WeightOnlyConfig"
    nf4 = quantization_config("nf4", device="cuda")
    assert (nf4.load_in_4bit, nf4.bnb_4bit_quant_type, nf4.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert nf4.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("fp4", device="cpu").bnb_4bit_compute_dtype == torch.float32


def test_unknown_scheme_and_int4_on_cpu_say_what_to_use():
    with pytest.raises(QuantizationError, match="unknown quantization scheme 'int3'.*int8, int4, nf4, fp4"):
        quantization_config("int3")
    with pytest.raises(QuantizationError, match="int4.*needs a CUDA GPU.*use nf4"):
        quantization_config("int4", device="cpu")


def test_conflicting_or_unloadable_requests_are_refused():
    with pytest.raises(QuantizationError, match="int4.*bfloat16 only.*not float32"):  # before any CUDA is needed
        CogvlmForCausalLM.from_pretrained(tiny_model_path("cogvlm2"), dtype=torch.float32,
                                          quantization_config=quantization_config("int4", device="cuda"))
    with pytest.raises(QuantizationError, match="pass one quantization"):
        CogvlmForCausalLM.from_pretrained(tiny_model_path("cogvlm2"), load_in_8bit=True, load_in_4bit=True)
    model = CogvlmForCausalLM.from_pretrained(tiny_model_path("cogvlm2"))
    with pytest.raises(CheckpointError, match="reads a checkpoint folder"):
        CogvlmForCausalLM.from_pretrained(None, config=model.config, state_dict=model.state_dict(),
                                          quantization_config=quantization_config("nf4", device="cpu"))


def test_light_to_import_and_a_missing_library_names_the_extra():
    """Run where the libraries cannot be imported (``sys.modules[name] = None`` makes ``import`` fail, as an
    uninstalled package does); the module itself must not pull in torch."""
    script = textwrap.dedent("""
        import sys
        sys.modules["bitsandbytes"] = sys.modules["torchao"] = None
        from coglens.modeling import quantization as q
        assert "torch" not in sys.modules, "quantization imports torch"
        for scheme, device in (("nf4", "cpu"), ("fp4", "cpu"), ("int8", "cpu"), ("int8", "cuda"), ("int4", "cuda")):
            try:
                q.quantization_config(scheme, device=device)
            except q.QuantizationError as exc:
                print(scheme, device, exc)
            else:
                raise SystemExit(f"{scheme} on {device} did not fail")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 5 and all(INSTALL_HINT in line for line in lines), out.stdout
    assert "needs bitsandbytes" in lines[0] and "needs torchao" in lines[2] and "needs bitsandbytes" in lines[3]


def _bf16_nf4_folder(tmp_path: Path) -> Path:
    """A 4-bit folder saved in bfloat16 (as THUDM's int4 release is), tokenizer included."""
    import shutil

    source = tiny_model_path("cogvlm2")
    model = CogvlmForCausalLM.from_pretrained(source, dtype=torch.bfloat16,
                                              quantization_config=quantization_config("nf4", device="cpu"))
    out = tmp_path / "nf4-bf16"
    model.save_pretrained(out)
    for file in source.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy2(file, out / file.name)
    return out


def test_a_prequantized_folder_loads_in_the_dtype_it_was_saved_in(tmp_path):
    """A CPU pipeline asks for float32 by default; the bf16-saved quantized folder must not become a mix of both
    (the vision tower's conv then refused bf16 input against a float32 bias)."""
    from coglens.pipeline import Pipeline

    pipe = Pipeline.load(str(_bf16_nf4_folder(tmp_path)), device="cpu")
    assert {p.dtype for p in pipe.model.parameters() if p.is_floating_point()} == {torch.bfloat16}
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    assert pipe.ask("What is it?", images=[image]).completion_tokens > 0


def test_prequantized_folders_with_unknown_methods_or_missing_libraries_are_named(tmp_path):
    import shutil

    folder = _bf16_nf4_folder(tmp_path)
    bad = shutil.copytree(folder, tmp_path / "gptq")
    edit_config(bad, lambda c: c["quantization_config"].update(quant_method="gptq"))
    with pytest.raises(QuantizationError, match="quant_method 'gptq'"):
        CogvlmForCausalLM.from_pretrained(bad)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["bitsandbytes"] = None
        from coglens.modeling import CogvlmForCausalLM
        from coglens.modeling.quantization import QuantizationError
        try:
            CogvlmForCausalLM.from_pretrained({str(folder)!r})
        except QuantizationError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert INSTALL_HINT in out.stdout and "bitsandbytes" in out.stdout, out.stdout + out.stderr


def test_quantize_checkpoint_never_writes_over_a_folder_with_files(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text("{}")
    with pytest.raises(QuantizationError, match="not empty"):
        quantize_checkpoint(source, source, "int8", device="cpu")
    assert (source / "config.json").read_text() == "{}"
