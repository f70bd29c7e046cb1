"""LoRA fine-tuning and multi-adapter serving on CPU: training speed and peak memory, and decode speed with several
adapters mixed in one batch, on the tiny and a mid-size model.

    python benchmarks/finetune.py [--quick] [--models tiny,mid] [--dtypes float32,bfloat16,nf4]
                                  [--checkpointing off,on] [--parts train,serve] [--serve-dtypes float32]
                                  [--batch-size 8] [--new-tokens 32] [--threads N] [--clock wall|cpu]

Training: ``coglens.adapt.finetune`` on a synthetic task (solid-colour images, "What colour is the image?" -> the
colour's name; a JSONL manifest in a temp dir), LoRA rank 8 on the language experts, ``--train-batch`` rows per
step. Each configuration runs in its own subprocess, so its peak RSS (``VmHWM``) is its own: while loading (up to
the first forward pass; unquantized weights are mapped lazily, so they count in the training peak) and while
training (reset in between). Samples/s is timed between optimizer steps (a global optimizer step hook) after
``--warmup`` steps, so loading, the first steps' allocations and saving are left out. ``nf4`` is QLoRA:
``quantize: nf4`` (bitsandbytes, double quantization) with the rest in float32, which is what peft's
``prepare_model_for_kbit_training`` casts it to anyway.

Serving: four peft LoRA adapters (rank 16, random A and B so they change the output) on the language experts'
attention and MLP, saved with ``save_pretrained``; ``Pipeline.load(adapters=...)`` puts them side by side
(``AdapterBank``). ``--batch-size`` image + text requests of ``--new-tokens`` tokens (``ignore_eos``) run
together: the base model with no adapters loaded, the adapters loaded but every row on the base model, every row on
one adapter, and rows round-robin over the base model and the four adapters. The engine prefills one adapter's rows
at a time and decodes all rows in one batch; decode tokens/s counts the steps after the prefill step, end-to-end
includes it. ``mixed steps`` is ``engine.stats.mixed_adapter_steps``: decode steps whose rows ran different adapters.

The mid-size model is ``benchmarks/quantize.py``'s (CogVLM2-shaped, ~384 M parameters, random weights, cached),
given the tiny checkpoint's tokenizer (its ids fit the 32000-row vocabulary) in a folder of links.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lens import CLOCKS  # noqa: E402  (the sibling benchmarks' helpers)
from quantize import _reset_peak, _status_mb, mid_checkpoint  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 40),
           "purple": (130, 40, 160), "orange": (240, 140, 20)}
QUERY = "What colour is the image?"
SERVE_TARGETS = ["language_expert_query_key_value", "language_expert_dense", "language_mlp.gate_proj",
                 "language_mlp.up_proj", "language_mlp.down_proj"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
LIST_OPTIONS = {"models": ("tiny", "mid"), "dtypes": ("float32", "bfloat16", "nf4"), "checkpointing": ("off", "on"),
                "parts": ("train", "serve"), "serve_dtypes": ("float32", "bfloat16")}


def machine() -> str:
    """The CPU, its cores, whether it has bf16 units (without them bfloat16 training takes slow matmul paths),
    torch and the load average (the numbers mean little on a busy machine)."""
    cpu, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            info = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in f if ":" in line)}
        cpu, flags = info.get("model name", cpu), set(info.get("flags", "").split())
    except OSError:
        pass
    bf16 = "bf16 units: " + (", ".join(sorted(flags & {"avx512_bf16", "amx_bf16"})) or "none")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, {bf16}; torch {torch.__version__}; load average {load}"


def model_paths(names: list[str], folder: Path) -> dict[str, Path]:
    """Checkpoint folders with a tokenizer: the tiny one as it is, the mid-size one as links plus the tiny
    tokenizer, its special-token ids written into a copy of the config."""
    from coglens.tiny import tiny_model_path

    tiny = tiny_model_path("cogvlm2")
    paths = {"tiny": tiny}
    if "mid" in names:
        mid, linked = mid_checkpoint(), folder / "mid"
        linked.mkdir()
        for file in mid.iterdir():
            if file.name != "config.json":
                (linked / file.name).symlink_to(file)
        for name in TOKENIZER_FILES:
            (linked / name).symlink_to(tiny / name)
        config = json.loads((mid / "config.json").read_text())
        special = json.loads((tiny / "config.json").read_text())
        config.update({key: special[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")})
        (linked / "config.json").write_text(json.dumps(config, indent=2))
        paths["mid"] = linked
    return {name: paths[name] for name in names}


def colour_manifest(folder: Path, rows: int) -> Path:
    """``rows`` solid 64 px images (colours in turn, each shade jittered, seeded) with their colour as the answer."""
    from PIL import Image

    rng, lines = random.Random(0), []
    names = list(COLOURS)
    for i in range(rows):
        name = names[i % len(names)]
        shade = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in COLOURS[name])
        Image.new("RGB", (64, 64), shade).save(folder / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "query": QUERY, "answer": name}) + "\n")
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(lines))
    return manifest


# --- worker: one training configuration in its own process --------------------------------------------------


def train_worker(args: argparse.Namespace) -> dict[str, Any]:
    from torch.nn.modules.module import register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from coglens.adapt import FinetuneConfig, finetune

    stamps: list[float] = []
    peaks: dict[str, Any] = {}

    def before_first_forward(*_: Any) -> None:  # loading is over: its peak, then restart the high-water mark
        first_forward.remove()
        peaks["load_mb"], peaks["reset"] = _status_mb("VmHWM"), _reset_peak()

    first_forward = register_module_forward_pre_hook(before_first_forward)
    # finetune shows its rate only on its progress bar: time the optimizer steps here
    now = CLOCKS[args.clock]
    register_optimizer_step_post_hook(lambda *_: stamps.append(now()))
    quantize = args.dtype if args.dtype not in ("float32", "bfloat16") else None
    steps = args.warmup + args.steps
    config = FinetuneConfig(
        output_dir=Path(args.out).with_suffix(""), train=args.train, model=args.path,
        dtype="float32" if quantize else args.dtype, quantize=quantize, gradient_checkpointing=args.ckpt,
        batch_size=args.train_batch, max_steps=steps, save_every=steps, learning_rate=1e-3, progress=False)
    result = finetune(config)
    trainable, total = result.peft_model.get_nb_trainable_parameters()
    seconds = stamps[-1] - stamps[args.warmup - 1]
    return {"samples_s": args.steps * args.train_batch / seconds, "step_s": seconds / args.steps,
            "loss": result.train_loss, "trainable": trainable, "total": total,
            "load_peak_mb": peaks["load_mb"], "train_peak_mb": _status_mb("VmHWM"), "peak_reset": peaks["reset"]}


# --- worker: serving one model with and without adapters ------------------------------------------------------


def make_adapters(path: str, folder: Path, count: int, rank: int) -> dict[str, Path]:
    """``count`` random LoRA adapters for the checkpoint at ``path``, saved by peft (seeded: the same each run)."""
    from peft import LoraConfig, get_peft_model

    from coglens import CogvlmForCausalLM

    model, adapters = CogvlmForCausalLM.from_pretrained(path), {}
    for i in range(count):
        torch.manual_seed(i)
        # init_lora_weights=False: B random too, so each adapter changes the output (peft's default B is zero)
        lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=SERVE_TARGETS, init_lora_weights=False)
        peft_model = get_peft_model(model, lora)
        adapters[f"lora{i}"] = folder / f"lora{i}"
        peft_model.save_pretrained(adapters[f"lora{i}"])
        model = peft_model.unload()
    return adapters


def decode_run(pipeline: Any, row_adapters: list[str | None], new_tokens: int, clock: str) -> dict[str, float]:
    """One batch of image + text requests, row i on ``row_adapters[i]``: prefill seconds, decode and end-to-end
    tokens/s, and the engine's mixed-adapter decode steps during it."""
    from PIL import Image

    from coglens.engine import SamplingParams

    engine, params = pipeline.engine, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    colours = list(COLOURS.values())
    requests = [pipeline.request(f"{QUERY} Answer in detail, row {i}.", params=params, adapter=adapter,
                                 images=[Image.new("RGB", (64, 64), colours[i % len(colours)])])
                for i, adapter in enumerate(row_adapters)]
    mixed, steps = engine.stats.mixed_adapter_steps, engine.stats.decode_steps
    for request in requests:
        engine.add(request)
    now = CLOCKS[clock]
    start = now()
    engine.step()  # every row's prefill (one forward pass per adapter among the rows) and first token
    prefilled, first = now(), engine.stats.generated_tokens
    while engine.has_work():
        engine.step()
    end = now()
    tokens = sum(engine.result(r.request_id).completion_tokens for r in requests)
    for request in requests:
        engine.release(request.request_id)
    assert tokens == len(requests) * new_tokens, "ignore_eos: every row decodes new_tokens"
    return {"prefill_s": prefilled - start, "decode_tok_s": (engine.stats.generated_tokens - first) / (end - prefilled),
            "e2e_tok_s": tokens / (end - start), "mixed_steps": engine.stats.mixed_adapter_steps - mixed,
            "decode_steps": engine.stats.decode_steps - steps}


def serve_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration once untimed (the first pass at a batch size allocates), then ``--repeats`` rounds that
    take each configuration in turn, so a change in the machine's load falls on all of them; the best is kept."""
    from coglens.pipeline import Pipeline

    torch.manual_seed(0)
    adapters = make_adapters(args.path, Path(args.out).with_suffix(""), 4, args.serve_rank)
    names, b = list(adapters), args.batch_size
    base = Pipeline.load(args.path, dtype=args.dtype, max_batch_size=b)
    bank = Pipeline.load(args.path, dtype=args.dtype, max_batch_size=b, adapters=adapters)
    cycle = [None, *names]
    configs = {
        "base model alone, no adapters loaded": (base, [None] * b),
        "4 adapters loaded, every row on the base model": (bank, [None] * b),
        "1 adapter (of 4 loaded), every row": (bank, [names[0]] * b),
        "base + 4 adapters mixed, round-robin by row": (bank, [cycle[i % len(cycle)] for i in range(b)]),
    }
    for pipeline, rows in configs.values():
        decode_run(pipeline, rows, min(4, args.new_tokens), args.clock)
    results: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for label, (pipeline, rows) in configs.items():
            run = decode_run(pipeline, rows, args.new_tokens, args.clock)
            if label not in results or run["decode_tok_s"] > results[label]["decode_tok_s"]:
                results[label] = run
    return results


# --- driver --------------------------------------------------------------------------------------------------


def run_worker(kind: str, path: Path, args: argparse.Namespace, out: Path, **options: Any) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; its JSON result, or {"error": its last line of stderr}."""
    cmd = [sys.executable, __file__, "--worker", kind, "--path", str(path), "--out", str(out)]
    for flag in ("train_batch", "batch_size", "new_tokens", "repeats", "serve_rank", "clock"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for key, value in options.items():
        if value is None:
            continue
        if value is True:
            cmd.append(f"--{key}")
        elif value is not False:
            cmd += [f"--{key}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(out.with_suffix(".json").read_text())


def threads_for(model: str, args: argparse.Namespace) -> int:
    """``--threads``, else 1 for the tiny model: its 64-wide matrices gain nothing from threads, and on a busy CPU
    two threads wait on each other (its training ran about 10x slower on two)."""
    return args.threads or (1 if model == "tiny" else torch.get_num_threads())


def print_training(model: str, path: Path, steps: int, warmup: int, args: argparse.Namespace, tmp: Path) -> None:
    print(f"\n## training: {model}, LoRA rank 8 on the language experts, {args.train_batch} rows per step, "
          f"{steps} steps timed after {warmup} warm-up, {threads_for(model, args)} thread(s), {args.clock} clock")
    print("| dtype | gradient checkpointing | samples/s | s/step | peak RSS MiB: load / train | final loss | "
          "trainable params |")
    print("|---|---|--:|--:|--:|--:|--:|")
    manifest = colour_manifest(Path(tempfile.mkdtemp(dir=tmp)), args.rows)
    for dtype in args.dtypes.split(","):
        for checkpointing in (value == "on" for value in args.checkpointing.split(",")):
            out = Path(tempfile.mkdtemp(dir=tmp)) / "train"
            res = run_worker("train", path, args, out, dtype=dtype, train=manifest, steps=steps,
                             warmup=warmup, ckpt=checkpointing, threads=threads_for(model, args))
            label = f"| {dtype} | {'on' if checkpointing else 'off'} |"
            if "error" in res:
                print(f"{label} not run: {res['error']} |||||", flush=True)
                continue
            train_peak = f"{res['train_peak_mb']:.0f}{'' if res['peak_reset'] else ' (incl. load)'}"
            print(f"{label} {res['samples_s']:.2f} | {res['step_s']:.2f} | {res['load_peak_mb']:.0f} / {train_peak} | "
                  f"{res['loss']:.3f} | {res['trainable'] / 1e6:.3f} M of {res['total'] / 1e6:.1f} M |", flush=True)


def print_serving(model: str, path: Path, args: argparse.Namespace, tmp: Path) -> None:
    for dtype in args.serve_dtypes.split(","):
        print(f"\n## serving: {model}, {dtype}, batch {args.batch_size}, {args.new_tokens} new tokens per row, "
              f"LoRA rank {args.serve_rank}, best of {args.repeats} rounds, {threads_for(model, args)} thread(s), "
              f"{args.clock} clock")
        res = run_worker("serve", path, args, Path(tempfile.mkdtemp(dir=tmp)) / "serve", dtype=dtype,
                         threads=threads_for(model, args))
        if "error" in res:
            print(f"not run: {res['error']}", flush=True)
            continue
        base = next(iter(res.values()))["decode_tok_s"]
        print("| rows | prefill s | decode tok/s | slowdown vs base alone | end-to-end tok/s | "
              "mixed steps / decode steps |")
        print("|---|--:|--:|--:|--:|--:|")
        for label, r in res.items():
            print(f"| {label} | {r['prefill_s']:.2f} | {r['decode_tok_s']:.1f} | {base / r['decode_tok_s']:.2f}× | "
                  f"{r['e2e_tok_s']:.1f} | {r['mixed_steps']} / {r['decode_steps']} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model only, few steps, no checkpointing rows")
    parser.add_argument("--models", default="tiny,mid", help="tiny and/or mid")
    parser.add_argument("--dtypes", default="float32,bfloat16,nf4", help="training rows: float32, bfloat16, nf4")
    parser.add_argument("--checkpointing", default="off,on", help="gradient checkpointing rows: off and/or on")
    parser.add_argument("--parts", default="train,serve", help="train and/or serve")
    parser.add_argument("--rows", type=int, default=24, help="rows in the synthetic training set")
    parser.add_argument("--train-batch", type=int, default=4, help="rows per training step")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default: 16 tiny, 2 mid)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed training steps first (default: 2 tiny, "
                        "1 mid)")
    parser.add_argument("--serve-dtypes", default="float32", help="serving tables: float32 and/or bfloat16")
    parser.add_argument("--batch-size", type=int, default=8, help="requests decoded together when serving")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--serve-rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="timed serving runs (the best is shown)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: CPU seconds of the worker (with --threads 1: the work done), for busy machines")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 for tiny, torch's "
                        "default for mid)")
    # worker mode (one configuration, called by the driver)
    parser.add_argument("--worker", choices=("train", "serve"), help=argparse.SUPPRESS)
    for name in ("--path", "--out", "--dtype", "--train"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        result = (train_worker if args.worker == "train" else serve_worker)(args)
        Path(args.out).with_suffix(".json").write_text(json.dumps(result))
        return
    if args.quick:
        args.models, args.checkpointing, args.repeats = "tiny", "off", 1
        args.steps = args.steps or 6
    for flag, allowed in LIST_OPTIONS.items():
        unknown = [value for value in getattr(args, flag).split(",") if value not in allowed]
        if unknown:
            parser.error(f"--{flag.replace('_', '-')} {','.join(unknown)}: not known; give a comma-separated list "
                         f"of {', '.join(allowed)}")
    if any(value is not None and value < 1 for value in (args.warmup, args.steps)):
        parser.error("--warmup and --steps must be at least 1: the timing runs from the end of the last warm-up step")
    print(machine())
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for model, path in model_paths(args.models.split(","), tmp).items():
            if "train" in args.parts:
                print_training(model, path, args.steps or (16 if model == "tiny" else 2),
                               args.warmup or (2 if model == "tiny" else 1), args, tmp)
            if "serve" in args.parts:
                print_serving(model, path, args, tmp)


if __name__ == "__main__":
    main()
