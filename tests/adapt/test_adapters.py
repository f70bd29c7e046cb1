"""``Pipeline.load(adapter=)`` and ``coglens merge-adapter``: the adapted model computes what peft's own PeftModel
computes on our model, and the merged checkpoint loads (our loader, transformers' Auto classes) to the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from testkit import run_cli

from coglens.modeling.loading import checkpoint_files, checkpoint_keys
from coglens.pipeline import resolve_model_path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/images/red_circle.png"


@torch.no_grad()
def _logits(model, pipe, query: str = "What shape is it?", image: Path | None = EXAMPLE) -> torch.Tensor:
    inputs = pipe.build_inputs(query, images=[str(image)] if image else None)
    return model(input_ids=inputs["input_ids"][None], token_type_ids=inputs["token_type_ids"][None],
                 attention_mask=inputs["attention_mask"][None],
                 images=[inputs["images"]] if image else None).logits[0]


def test_adapted_pipeline_computes_what_peft_computes(adapted_pipeline, lora_adapter, tiny_pipeline):
    from peft import PeftModel

    from coglens.modeling import CogvlmForCausalLM

    reference = PeftModel.from_pretrained(CogvlmForCausalLM.from_pretrained(resolve_model_path("tiny:cogvlm2")),
                                          str(lora_adapter))  # unmerged: LoRA computed beside the weights
    for image in (EXAMPLE, None):  # vision tower + vision experts, and text only (language experts)
        ours, peft_logits = _logits(adapted_pipeline.model, adapted_pipeline, image=image), \
            _logits(reference, adapted_pipeline, image=image)
        torch.testing.assert_close(ours, peft_logits, atol=1e-4, rtol=1e-4)
        assert (ours - _logits(tiny_pipeline.model, tiny_pipeline, image=image)).abs().max() > 0.1
    # the engine's greedy answer is the peft model's own greedy continuation
    answer = adapted_pipeline.ask("Hello", params=None).token_ids[:6]
    inputs = adapted_pipeline.build_inputs("Hello")
    ids, types = inputs["input_ids"][None], inputs["token_type_ids"][None]
    greedy = []
    with torch.no_grad():
        for _ in range(len(answer)):
            nxt = reference(input_ids=ids, token_type_ids=types).logits[0, -1].argmax()
            greedy.append(int(nxt))
            ids, types = torch.cat([ids, nxt.view(1, 1)], 1), torch.cat([types, types[:, -1:]], 1)
    assert answer == greedy
    assert answer != tiny_pipeline.ask("Hello").token_ids[:6]


def test_merge_adapter_writes_a_thudm_checkpoint_with_the_adapted_logits(adapted_pipeline, lora_adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    from coglens.modeling import CogvlmForCausalLM

    base, out = resolve_model_path("tiny:cogvlm2"), tmp_path / "merged"
    result = run_cli("merge-adapter", "tiny:cogvlm2", str(lora_adapter), str(out))
    assert result.returncode == 0, result.stderr
    assert checkpoint_keys(checkpoint_files(out)) == checkpoint_keys(checkpoint_files(base))  # THUDM's names
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= {
        f.name for f in out.iterdir()}
    expected = _logits(adapted_pipeline.model, adapted_pipeline)
    for model in (CogvlmForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)):
        torch.testing.assert_close(_logits(model, adapted_pipeline), expected, atol=1e-5, rtol=1e-5)

    again = run_cli("merge-adapter", "tiny:cogvlm2", str(lora_adapter), str(out))  # never over a checkpoint
    assert again.returncode == 1 and "already exists" in again.stderr


def _error_line(result) -> str:
    """The one ``error:`` line a failed command prints, and no traceback."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_a_folder_that_is_not_an_adapter_fails_before_the_model_loads(tmp_path):
    assert "is not a PEFT adapter" in _error_line(run_cli("ask", "hi", "--adapter", str(tmp_path)))
    assert "does not exist" in _error_line(run_cli("ask", "hi", "--adapter", str(tmp_path / "nope")))
    line = _error_line(run_cli("ask", "hi", "--adapter", str(tmp_path), "--quantize", "int8"))
    assert "coglens merge-adapter" in line


def test_an_adapter_for_another_base_is_one_clear_line(lora_adapter, tmp_path):
    import json
    import shutil

    from coglens.tiny.variants import get_tiny_variant

    line = _error_line(run_cli("ask", "hi", "--model", "tiny:cogvlm", "--adapter", str(lora_adapter)))
    dims, kv_heads = get_tiny_variant("cogvlm2").language, get_tiny_variant("cogvlm2").num_kv_heads
    gqa_qkv, mha_qkv = dims.hidden_size + 2 * kv_heads * dims.head_dim, 3 * dims.hidden_size  # CogVLM2's vs CogVLM's
    assert str(lora_adapter) in line
    assert f"has shape [{gqa_qkv}, 4] in the adapter but [{mha_qkv}, 4] in the model" in line

    renamed = shutil.copytree(lora_adapter, tmp_path / "renamed")  # modules our tree does not have
    config = json.loads((renamed / "adapter_config.json").read_text())
    (renamed / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "v_proj"]}))
    assert "q_proj" in _error_line(run_cli("ask", "hi", "--adapter", str(renamed)))

    more = shutil.copytree(lora_adapter, tmp_path / "more")  # adapts modules its file has no weights for
    (more / "adapter_config.json").write_text(json.dumps({**config, "target_modules": [
        *config["target_modules"], "vision_expert_query_key_value"]}))
    line = _error_line(run_cli("ask", "hi", "--adapter", str(more)))
    assert "lacks 4 weight(s)" in line and "model.layers.0.self_attn.vision_expert_query_key_value.lora_A" in line


def test_pipeline_refuses_an_adapter_on_quantized_weights(lora_adapter):
    from coglens.modeling.adapters import AdapterError
    from coglens.pipeline import Pipeline

    with pytest.raises(AdapterError, match="merge-adapter"):
        Pipeline.load("tiny:cogvlm2", adapter=lora_adapter, quantize="int8")
