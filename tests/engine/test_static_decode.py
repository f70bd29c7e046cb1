"""The fixed-shape decode step: rows joining and leaving the preallocated slots, batched device sampling, and the
compiled step (torch.compile) giving the same tokens as transformers' generate(), with hooks and without."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter

import pytest
import torch

from coglens.engine import Engine, GenerationRequest, SamplingParams
from coglens.engine.compiled import DecodeStep, cxx_compiler
from coglens.engine.sampling import filter_top_k_top_p, sample_batch, sample_next
from coglens.lens.intervene import Intervene, Steer
from coglens.processing.image import load_image

IMAGE = "examples/images/red_circle.png"
# CI installs g++; elsewhere the compiled tests need one too (they say so instead of failing)
pytestmark = pytest.mark.skipif(cxx_compiler() is None and os.environ.get("CI") != "true",
                                reason="torch.compile needs a C++ compiler on CPU (apt install g++)")
QUESTIONS = ["What is in the image?", "Describe it in detail please, with every colour and shape you can see.",
             "Color?", "Is the circle red or blue, and how big is it compared with the picture?", "Shape?"]


@pytest.fixture(scope="module")
def pipe(tiny_pipeline):
    return tiny_pipeline


@pytest.fixture(scope="module")
def compiled(pipe):
    """One compiled engine for the module: the first steps at each batch bucket compile (seconds on the CPU)."""
    return Engine(pipe.model, pipe.tokenizer, max_batch_size=4, compile=True)


def _prompts(pipe):
    image = load_image(IMAGE)
    return [pipe.build_inputs(q, images=[image] if i % 2 == 0 else None) for i, q in enumerate(QUESTIONS)]


def _request(x, params, request_id=None):
    extra = {"request_id": request_id} if request_id else {}
    return GenerationRequest(x["input_ids"], x["token_type_ids"], list(x["images"] or []), params, **extra)


def _hf_alone(pipe, x, n):
    """transformers' generate() on one unpadded prompt: the independent reference."""
    with torch.no_grad():
        out = pipe.model.generate(input_ids=x["input_ids"][None], token_type_ids=x["token_type_ids"][None],
                                  images=[list(x["images"] or [])], max_new_tokens=n, do_sample=False,
                                  eos_token_id=None)
    return out[0, x["input_ids"].numel():].tolist()


def _run_staggered(engine, prompts, lengths):
    """Requests join one per step while others decode (the longer prompts after shorter ones: the history shifts
    right) and leave at different steps (columns and rows are dropped): every join/leave path of the slots."""
    ids = [f"stagger-{i}-{id(engine)}" for i in range(len(prompts))]
    pending = [_request(x, SamplingParams(max_new_tokens=n, ignore_eos=True), rid)
               for x, n, rid in zip(prompts, lengths, ids, strict=True)]
    while pending or engine.has_work():
        if pending:
            engine.add(pending.pop(0))
        engine.step()
    results = [engine.result(rid) for rid in ids]
    for rid in ids:
        engine.release(rid)
    return [r.token_ids for r in results]


@pytest.mark.parametrize("engine_kind", ["eager", "compiled"])
def test_rows_joining_and_leaving_decode_what_each_prompt_decodes_alone(pipe, compiled, engine_kind):
    engine = compiled if engine_kind == "compiled" else Engine(pipe.model, pipe.tokenizer, max_batch_size=4)
    prompts = _prompts(pipe)
    lengths = [9, 3, 12, 5, 7]  # five requests through four slots: the last one waits for a free slot
    got = _run_staggered(engine, prompts, lengths)
    for x, n, tokens in zip(prompts, lengths, got, strict=True):
        assert tokens == _hf_alone(pipe, x, n)


def test_compiled_step_runs_compiled_with_bounded_graphs(pipe, compiled):
    assert compiled.decode_step.compiled and compiled.decode_step.use_compiled()
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    prompts = _prompts(pipe)
    # batch sizes 1..4 and a window past 128 columns: buckets and the dynamic column count reuse the graphs
    for rows, n in ((1, 4), (2, 120), (3, 4), (4, 4), (1, 120)):
        compiled.generate([_request(x, SamplingParams(max_new_tokens=n, ignore_eos=True)) for x in prompts[:rows]])
    assert compiled.decode_step.compiled  # nothing fell back
    assert counters["stats"]["unique_graphs"] - before <= 3


def test_compiled_greedy_equals_eager_over_long_answers(pipe, compiled):
    prompts = _prompts(pipe)[:3]
    params = SamplingParams(max_new_tokens=120, ignore_eos=True)  # past the first column bucket (128)
    eager = Engine(pipe.model, pipe.tokenizer, max_batch_size=4).generate([_request(x, params) for x in prompts])
    ours = compiled.generate([_request(x, params) for x in prompts])
    assert [r.token_ids for r in ours] == [r.token_ids for r in eager]
    for mine, theirs in zip(ours, eager, strict=True):
        assert mine.logprobs == pytest.approx(theirs.logprobs, abs=1e-4)


def test_seeded_sampling_is_the_same_compiled_batched_and_alone(pipe, compiled):
    prompts = _prompts(pipe)
    params = SamplingParams(max_new_tokens=12, do_sample=True, temperature=1.2, top_k=50, top_p=0.9, seed=11,
                            ignore_eos=True, stop=["zzz"])
    other = SamplingParams(max_new_tokens=5, do_sample=True, temperature=1.7, seed=2, ignore_eos=True)
    eager = Engine(pipe.model, pipe.tokenizer, max_batch_size=4)
    [alone] = eager.generate([_request(prompts[0], params)])
    batched = eager.generate([_request(prompts[0], params), _request(prompts[1], other), _request(prompts[2], other)])
    [in_compiled] = compiled.generate([_request(prompts[0], params)])
    assert batched[0].token_ids == alone.token_ids == in_compiled.token_ids


def test_hooks_make_a_compiled_step_eager_and_fire_on_every_decode_step(pipe, compiled):
    """By design the lens runs the uncompiled step: a compiled graph would skip hooks registered after tracing."""
    x = _prompts(pipe)[1]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    [plain] = compiled.generate([_request(x, params)])
    calls = []
    handle = pipe.model.model.layers[0].register_forward_hook(lambda m, a, out: calls.append(out.shape[1]))
    try:
        assert not compiled.decode_step.use_compiled()
        [hooked] = compiled.generate([_request(x, params)])
    finally:
        handle.remove()
    assert compiled.decode_step.use_compiled()
    assert hooked.token_ids == plain.token_ids
    assert calls == [x["input_ids"].numel()] + [1] * 5  # the prefill, then one call per decode step


def test_interventions_apply_in_a_compiled_engine(pipe, compiled):
    x = _prompts(pipe)[0]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    vector = torch.randn(pipe.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 4
    eager = Engine(pipe.model, pipe.tokenizer)
    results = []
    for engine in (eager, compiled):
        with Intervene(pipe.model, [Steer("model.layers.1", vector, tokens="all", steps="all")]):
            results.append(engine.generate([_request(x, params)])[0].token_ids)
    [clean] = compiled.generate([_request(x, params)])
    assert results[0] == results[1] != clean.token_ids


def test_no_cxx_compiler_falls_back_with_what_to_install(pipe, caplog):
    from torch._inductor import config

    with config.patch({"cpp.cxx": (None, "no-such-compiler")}), \
            caplog.at_level(logging.WARNING, logger="coglens.engine.compiled"):
        engine = Engine(pipe.model, pipe.tokenizer, compile=True)
    assert not engine.decode_step.compiled
    assert "needs a C++ compiler on CPU and none was found" in caplog.text and "apt install g++" in caplog.text
    x = _prompts(pipe)[1]
    assert engine.generate([_request(x, SamplingParams(max_new_tokens=4))])[0].token_ids == _hf_alone(pipe, x, 4)


def test_a_failing_compilation_falls_back_to_the_eager_step(pipe, caplog):
    engine = Engine(pipe.model, pipe.tokenizer, compile=True)

    def broken(*args):
        raise RuntimeError("inductor exploded")

    engine.decode_step._compiled = broken
    x = _prompts(pipe)[0]
    with caplog.at_level(logging.WARNING, logger="coglens.engine.compiled"):
        [result] = engine.generate([_request(x, SamplingParams(max_new_tokens=5, ignore_eos=True))])
    assert result.token_ids == _hf_alone(pipe, x, 5)
    assert "inductor exploded" in caplog.text and not engine.decode_step.compiled


def test_compile_auto_is_on_for_the_cpu_and_off_for_cuda_until_measured(pipe):
    assert Engine(pipe.model, pipe.tokenizer, compile="auto").decode_step.compiled
    step = DecodeStep(pipe.model, torch.device("cuda"), compile="auto")  # nothing runs: only the decision
    assert not step.compiled
    with pytest.raises(ValueError, match="use True, False or 'auto'"):
        Engine(pipe.model, pipe.tokenizer, compile="yes")


def test_stream_stop_string_and_abort_under_compile(pipe, compiled):
    x = _prompts(pipe)[0]
    [full] = compiled.generate([_request(x, SamplingParams(max_new_tokens=20, ignore_eos=True))])
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 2]
    events = list(compiled.stream(_request(x, SamplingParams(max_new_tokens=20, ignore_eos=True, stop=[stop]))))
    assert events[-1].finish_reason == "stop" and "".join(e.text for e in events) == full.text[:full.text.index(stop)]
    halt = threading.Event()
    seen = []
    for event in compiled.stream(_request(x, SamplingParams(max_new_tokens=20, ignore_eos=True)), stop=halt):
        seen.append(event)
        if len(seen) == 3:
            halt.set()
    assert seen[-1].finish_reason == "abort" and [e.token_id for e in seen[:3]] == full.token_ids[:3]
    assert compiled.decode_step.use_compiled() and not compiled.has_work()


def test_adapter_banks_decode_uncompiled_and_say_why(pipe, caplog):
    with caplog.at_level(logging.WARNING, logger="coglens.engine.compiled"):
        engine = Engine(pipe.model, pipe.tokenizer, compile=True, adapters=object())  # any bank: never used here
    assert not engine.decode_step.compiled and "LoRA adapters" in caplog.text


def test_transformers_static_cache_is_refused_clearly(pipe):
    x = _prompts(pipe)[1]
    with pytest.raises(ValueError, match="not supported by CogVLM models.*coglens's engine"):
        pipe.model.generate(input_ids=x["input_ids"][None], token_type_ids=x["token_type_ids"][None],
                            max_new_tokens=2, cache_implementation="static")


# --- the batched sampler against the one-row sampler ------------------------------------------------------------

def test_batched_greedy_and_logprobs_equal_the_row_sampler():
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(0)) * 3
    params = [SamplingParams(top_logprobs=k) for k in (0, 1, 5, 20, 3)]
    tokens, draws = sample_batch(logits, params, [None] * 5)
    for row, (p, draw) in enumerate(zip(params, draws, strict=True)):
        alone = sample_next(logits[row], p, torch.tensor([1]), [], None)
        assert draw.token == alone.token == int(tokens[row])
        assert draw.logprob == pytest.approx(alone.logprob, abs=1e-5)
        assert [i for i, _ in draw.top] == [i for i, _ in alone.top]


def test_a_row_samples_the_same_beside_top_p_rows():
    """A row without top-p keeps its whole distribution (a float32 cumsum reaches 1 early) whatever its batch."""
    logits = torch.randn(32000, generator=torch.Generator().manual_seed(2)) * 4
    plain = SamplingParams(do_sample=True, temperature=0.9)
    nucleus = SamplingParams(do_sample=True, temperature=0.9, top_p=0.5)
    _, [alone] = sample_batch(logits[None], [plain], [torch.Generator().manual_seed(5)])
    _, [beside, _] = sample_batch(logits.expand(2, -1), [plain, nucleus],
                                  [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    assert beside == alone


def test_batched_sampling_draws_from_the_filtered_distribution():
    logits = torch.randn(300, generator=torch.Generator().manual_seed(1)) * 2
    params = SamplingParams(do_sample=True, temperature=0.8, top_k=12, top_p=0.8)
    expected = filter_top_k_top_p((logits - logits.max()) / 0.8, 12, 0.8).softmax(-1)
    rows = 30
    gens = [torch.Generator().manual_seed(seed) for seed in range(rows)]
    counts: Counter[int] = Counter()
    n = 3000
    for _ in range(n // rows):
        tokens, draws = sample_batch(logits.expand(rows, -1), [params] * rows, gens)
        counts.update(tokens.tolist())
        for draw in draws:
            assert draw.logprob == pytest.approx(float(torch.log(expected[draw.token])), abs=1e-5)
    support = set(torch.nonzero(expected).flatten().tolist())
    assert set(counts) <= support
    for token in support:  # each kept token's frequency within 4 standard deviations of its probability
        p = float(expected[token])
        assert abs(counts[token] / n - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu.sh runs it)")
def test_cuda_graphs_step_equals_eager_on_the_gpu(tiny_pipelines):
    """The compiled CUDA step (inductor + CUDA graphs, replayed over bucketed windows) against the eager one."""
    gpu = tiny_pipelines("cogvlm2", device="cuda")
    prompts = _prompts(gpu)
    compiled_gpu = Engine(gpu.model, gpu.tokenizer, max_batch_size=4, compile=True)
    eager_gpu = Engine(gpu.model, gpu.tokenizer, max_batch_size=4)
    assert compiled_gpu.decode_step.compiled
    lengths = [30, 3, 140, 5, 7]
    assert _run_staggered(compiled_gpu, prompts, lengths) == _run_staggered(eager_gpu, prompts, lengths)
    assert compiled_gpu.decode_step.compiled  # nothing fell back
    from torch._dynamo.utils import counters

    assert not counters["inductor"]["cudagraph_skips"]  # CUDA graphs were used, not skipped
