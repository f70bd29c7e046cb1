"""``Pipeline.load(adapters=)``: LoRA adapters side by side, chosen per request; rows of different adapters share
decode steps, and every row's answer is the one it gets alone and the one peft's merged adapter gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lora_kit import save_lora

from coglens.engine import Engine, EngineInputError, GenerationRequest, SamplingParams
from coglens.engine.scheduler import Scheduler
from coglens.modeling.adapters import AdapterBank, AdapterError, check_adapter_name
from coglens.pipeline import Pipeline

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/images/red_circle.png"
PARAMS = SamplingParams(max_new_tokens=10, ignore_eos=True)  # every row decodes every step


@pytest.fixture(scope="module")
def second_adapter(tmp_path_factory) -> Path:
    return save_lora(tmp_path_factory.mktemp("adapters") / "second", seed=1)


@pytest.fixture(scope="module")
def banked(lora_adapter, second_adapter) -> Pipeline:
    return Pipeline.load("tiny:cogvlm2", adapters={"one": lora_adapter, "two": second_adapter}, device="cpu")


def _requests(pipe: Pipeline, adapters: list[str | None], tag: str) -> list[GenerationRequest]:
    requests = []
    for i, adapter in enumerate(adapters):
        inputs = pipe.build_inputs("What is it?", images=[str(EXAMPLE)] if i % 2 else None)
        requests.append(GenerationRequest(inputs["input_ids"], inputs["token_type_ids"], list(inputs["images"] or []),
                                          PARAMS, request_id=f"{tag}-{i}", adapter=adapter))
    return requests


def test_mixed_rows_answer_as_alone_and_as_the_merged_adapters(banked, lora_adapter, second_adapter, tiny_pipeline):
    names = [None, "one", "two", "one", None, "two"]
    alone = [banked.engine.generate([request])[0].token_ids for request in _requests(banked, names, "alone")]
    stats = banked.engine.stats
    before = (stats.prefill_batches, stats.mixed_adapter_steps)
    together = [r.token_ids for r in banked.engine.generate(_requests(banked, names, "together"))]

    assert together == alone
    assert stats.prefill_batches - before[0] == 3  # one prefill per adapter (and the base model) among the rows
    assert stats.mixed_adapter_steps - before[1] == PARAMS.max_new_tokens - 1  # every decode step mixed them
    merged = {None: tiny_pipeline, "one": Pipeline.load("tiny:cogvlm2", adapter=lora_adapter, device="cpu"),
              "two": Pipeline.load("tiny:cogvlm2", adapter=second_adapter, device="cpu")}
    for i, (name, tokens) in enumerate(zip(names, together, strict=True)):
        expected = merged[name].ask("What is it?", params=PARAMS, images=[str(EXAMPLE)] if i % 2 else None)
        assert tokens == expected.token_ids
    assert len({tuple(t) for t in together[:3]}) == 3  # the adapters do change the answers


def test_unknown_adapters_are_refused_when_added(banked, tiny_pipeline):
    request = _requests(banked, ["three"], "unknown")[0]
    with pytest.raises(EngineInputError, match="adapter 'three' is not loaded; the loaded adapters are one, two"):
        banked.engine.add(request)
    with pytest.raises(EngineInputError, match="no adapters are loaded"):
        tiny_pipeline.engine.add(_requests(tiny_pipeline, ["one"], "none")[0])


def test_a_mixed_forward_with_images_is_refused(banked):
    inputs = banked.build_inputs("What is it?", images=[str(EXAMPLE)])
    ids, types = inputs["input_ids"][None].repeat(2, 1), inputs["token_type_ids"][None].repeat(2, 1)
    with pytest.raises(ValueError, match="one adapter at a time"):
        banked.engine.adapters.forward(["one", None], input_ids=ids, token_type_ids=types,
                                       images=[[inputs["images"][0]]] * 2)


def test_quantized_base_weights_serve_adapters_unmerged(lora_adapter):
    """QLoRA inference: nf4 base weights stay quantized, the adapters ride beside them, rows still mix."""
    pipe = Pipeline.load("tiny:cogvlm2", adapters={"one": lora_adapter}, quantize="nf4", dtype="float32",
                         device="cpu")
    names = ["one", None, "one"]
    alone = [pipe.engine.generate([request])[0].token_ids for request in _requests(pipe, names, "alone")]
    assert [r.token_ids for r in pipe.engine.generate(_requests(pipe, names, "together"))] == alone
    assert alone[0] != pipe.engine.generate(_requests(pipe, [None], "base"))[0].token_ids


def _save(out: Path, **config) -> Path:
    from peft import get_peft_model

    from coglens.modeling import CogvlmForCausalLM
    from coglens.pipeline import resolve_model_path

    model = CogvlmForCausalLM.from_pretrained(resolve_model_path("tiny:cogvlm2"))
    get_peft_model(model, config.pop("peft_config")).save_pretrained(out)
    return out


def test_adapters_peft_cannot_mix_per_row_are_refused_before_loading(tmp_path):
    from peft import IA3Config, LoraConfig

    dora = _save(tmp_path / "dora", peft_config=LoraConfig(target_modules=["language_expert_dense"], use_dora=True))
    ia3 = _save(tmp_path / "ia3", peft_config=IA3Config(target_modules=["language_expert_dense"],
                                                         feedforward_modules=[]))
    with pytest.raises(AdapterError, match="uses DoRA, which cannot be served per batch row beside other adapters"):
        Pipeline.load("tiny:cogvlm2", adapters={"d": dora}, device="cpu")
    with pytest.raises(AdapterError, match="is of type IA3, not LoRA: only LoRA adapters can be served side by side"):
        Pipeline.load("tiny:cogvlm2", adapters={"i": ia3}, device="cpu")


def test_an_adapter_of_another_base_model_is_named(lora_adapter):
    with pytest.raises(AdapterError, match="cannot apply the adapter .* has shape .* made for another base model"):
        Pipeline.load("tiny:cogvlm", adapters={"one": lora_adapter}, device="cpu")


def test_merging_and_banking_at_once_is_refused(lora_adapter):
    with pytest.raises(AdapterError, match="not both"):
        Pipeline.load("tiny:cogvlm2", adapter=lora_adapter, adapters={"one": lora_adapter}, device="cpu")


@pytest.mark.parametrize("name", ["", "a b", "-x", "__base__", "x" * 129, "é"])
def test_adapter_names_are_what_clients_can_send(name):
    with pytest.raises(AdapterError, match="is not usable"):
        check_adapter_name(name)


def test_an_empty_bank_is_refused(tiny_pipeline):
    with pytest.raises(AdapterError, match="no adapters given"):
        AdapterBank(tiny_pipeline.model, {})


def _logits(pipe: Pipeline, model) -> torch.Tensor:
    inputs = pipe.build_inputs("What is it?", images=[str(EXAMPLE)])
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"][None], token_type_ids=inputs["token_type_ids"][None],
                     images=[inputs["images"]]).logits[0, -1]


def test_a_failed_mixed_step_leaves_nothing_behind_and_the_model_stays_the_base_model(banked, tiny_pipeline):
    """A step that raises mid-forward (an out-of-memory error) must not leave rows' adapters in the layers, and
    outside the engine the banked model computes the base model, whichever adapter ran last."""
    names = ["one", "two", None]
    alone = [banked.engine.generate([r])[0].token_ids for r in _requests(banked, names, "before")]
    head, calls = banked.model.lm_head.forward, []

    def failing(x):
        calls.append(x.shape)
        if len(calls) == 3:  # a mixed decode step
            raise RuntimeError("CUDA out of memory (simulated)")
        return head(x)

    banked.model.lm_head.forward = failing
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            Engine(banked.model, banked.tokenizer, adapters=banked.engine.adapters).generate(
                _requests(banked, names, "failing"))
    finally:
        del banked.model.lm_head.forward
    engine = Engine(banked.model, banked.tokenizer, adapters=banked.engine.adapters)
    assert [r.token_ids for r in engine.generate(_requests(banked, names, "after"))] == alone
    twos = [engine.generate([r])[0].token_ids for r in _requests(banked, ["two", "two"], "two")]
    assert twos[1] == alone[1] and [r.token_ids for r in engine.generate(_requests(banked, ["two"] * 2, "b"))] == twos
    torch.testing.assert_close(_logits(banked, banked.model), _logits(tiny_pipeline, tiny_pipeline.model))


def test_the_scheduler_rebuilds_a_failed_engine_with_its_adapters(banked):
    scheduler = Scheduler(banked.engine, max_queue=4, request_timeout_s=30)
    scheduler._recover(RuntimeError("simulated"))
    assert scheduler.engine is not banked.engine and scheduler.engine.adapters is banked.engine.adapters


@pytest.mark.parametrize(("config", "words"), [
    ({"modules_to_save": ["lm_head"]}, "uses modules_to_save"),
    ({"bias": "all"}, "trains biases \\(bias='all'\\)"),
    ({"layer_replication": [[0, 2]]}, "uses layer_replication"),
])
def test_lora_settings_that_cannot_be_served_per_row_are_refused(tmp_path, config, words):
    from peft import LoraConfig

    folder = _save(tmp_path / "a", peft_config=LoraConfig(target_modules=["language_expert_dense"], **config))
    with pytest.raises(AdapterError, match=words):
        Pipeline.load("tiny:cogvlm2", adapters={"a": folder}, device="cpu")


def test_a_corrupt_weights_file_is_one_clear_error(lora_adapter, tmp_path):
    import shutil

    broken = shutil.copytree(lora_adapter, tmp_path / "broken")
    (broken / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(AdapterError, match="cannot apply the adapter"):
        Pipeline.load("tiny:cogvlm2", adapters={"a": broken}, device="cpu")
