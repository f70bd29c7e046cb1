"""Quantization on CPU: weight bytes, peak RSS, speed and quality per scheme, on the tiny and a mid-size model.

    python benchmarks/quantize.py [--quick] [--models tiny,mid] [--schemes fp32,bf16,int8,nf4,fp4,int4]
                                  [--dtypes bfloat16,float32] [--quantize-vision] [--threads N]

Each scheme runs in its own subprocess, so peak RSS while loading and while generating (``VmHWM``, reset between
the two) are that scheme's alone. Quality is measured against the float32 model on a fixed set of image + text
prompts (seeded images and token ids, no tokenizer needed): top-1 agreement and KL(fp32 || scheme) of the
next-token distribution at every text position (teacher-forced), and how many leading greedy tokens match.

The mid-size model is CogVLM2-shaped (GQA, vision experts, 2x2 conv; ~380 M parameters), initialised by the
model's own ``_init_weights`` (normal, ``initializer_range`` 0.02) and cached under ``$COGLENS_CACHE/bench``.
Quantized rows keep the unquantized parts (vision, adapter, lm_head, embeddings, norms) in ``--dtypes``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from coglens import Cogvlm2Config, CogvlmForCausalLM
from coglens.engine import Engine, GenerationRequest, SamplingParams
from coglens.modeling import load_config
from coglens.modeling.quantization import (
    QuantizationError,
    compare_next_token,
    greedy_match_length,
    quantization_config,
)
from coglens.modeling.sizes import ModelDims, stored_bytes, weight_bytes
from coglens.tiny import tiny_model_path
from coglens.tiny.cache import cache_root

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import _NoText, decode_rate  # noqa: E402  (the sibling benchmark's decode measurement)

MID_SIZE = dict(
    vocab_size=32000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=8, num_attention_heads=16,
    num_multi_query_heads=4, max_position_embeddings=4096,
    vision_config=dict(image_size=224, patch_size=14, hidden_size=768, intermediate_size=3072, num_heads=12,
                       num_hidden_layers=12),
)
MID_FORMAT = 1  # bump when MID_SIZE or the way it is built changes
UNQUANTIZED = {"fp32": torch.float32, "bf16": torch.bfloat16}


def mid_checkpoint() -> Path:
    """The mid-size checkpoint, built once (seed 0) and written atomically into the cache."""
    target = cache_root() / "bench" / f"mid-cogvlm2-v{MID_FORMAT}"
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = CogvlmForCausalLM(Cogvlm2Config(**MID_SIZE))  # post_init: the model's own _init_weights
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        model.save_pretrained(staging, max_shard_size="500MB")
        os.replace(staging, target)
    return target


def prompts(config: Any, count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``count`` (input_ids, token_type_ids, image): [bos, image slots, 12-24 text tokens], seeded.

    Images are smooth (bilinearly upsampled 8x8 noise, normalised range) rather than white noise, so the vision
    tower sees spatially correlated input as with photos.
    """
    g = torch.Generator().manual_seed(seed)
    size, n_img = config.vision_config.image_size, config.num_image_tokens
    out = []
    for i in range(count):
        coarse = torch.randn(1, 3, 8, 8, generator=g)
        image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]
        text = torch.randint(3, config.vocab_size, (12 + 4 * (i % 4),), generator=g)
        ids = torch.cat([torch.tensor([config.bos_token_id or 1]), torch.zeros(n_img, dtype=torch.long), text])
        types = torch.cat([torch.zeros(1), torch.ones(n_img), torch.zeros(text.numel())]).long()
        out.append((ids, types, image))
    return out


# --- worker: one scheme in its own process ------------------------------------------------------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def _reset_peak() -> bool:
    """Restart ``VmHWM`` at the current RSS (Linux >= 4.0), so the next peak is the generation's alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _touch(model: torch.nn.Module) -> None:
    def read(t: torch.Tensor) -> None:
        if hasattr(t, "__tensor_flatten__"):  # a torchao tensor subclass: its plain inner tensors
            for name in t.__tensor_flatten__()[0]:
                read(getattr(t, name))
        else:
            t.reshape(-1)[:: max(1, 4096 // t.element_size())].float().sum()  # one value per 4 KiB page

    for t in [*model.parameters(), *model.buffers()]:
        read(t.data)


def load(path: Path, scheme: str, dtype: torch.dtype, quantize_vision: bool) -> CogvlmForCausalLM:
    if scheme in UNQUANTIZED:
        return CogvlmForCausalLM.from_pretrained(path, torch_dtype=UNQUANTIZED[scheme])
    config = quantization_config(scheme, device="cpu", quantize_vision=quantize_vision)
    return CogvlmForCausalLM.from_pretrained(path, torch_dtype=dtype, quantization_config=config)


@torch.inference_mode()
def worker(args: argparse.Namespace) -> None:
    """Load, measure, and write the metrics (JSON) and the text positions' logits + greedy tokens (.pt)."""
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    t = time.perf_counter()
    try:
        model = load(Path(args.path), args.scheme, dtype, args.quantize_vision).eval()
    except QuantizationError as exc:  # a scheme this device cannot run: its message is the result
        Path(args.out).with_suffix(".json").write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return
    _touch(model)  # safetensors maps the unquantized weights lazily: read them all before the peak
    load_s = time.perf_counter() - t
    load_peak = _status_mb("VmHWM")
    reset = _reset_peak()

    batch = prompts(model.config, args.prompts)
    forward = lambda ids, types, image: model(  # noqa: E731
        input_ids=ids[None], token_type_ids=types[None], images=[[image]]).logits[0]
    forward(*batch[0])  # warm-up: the first pass at a size allocates
    logits, prefill_s, prefill_tokens = [], 0.0, 0
    for ids, types, image in batch:
        times = []
        for _ in range(2):  # the best of two: the development machine is shared
            t = time.perf_counter()
            out = forward(ids, types, image)
            times.append(time.perf_counter() - t)
        prefill_s += min(times)
        prefill_tokens += ids.numel()
        text = int((types == 0).sum()) - 1  # text tokens after bos; each predicts the next one
        logits.append(out[-text:].float())
    engine = Engine(model, _NoText(), max_batch_size=1)
    greedy = [engine.generate([GenerationRequest(ids, types, [image], SamplingParams(
        max_new_tokens=args.new_tokens, ignore_eos=True))])[0].token_ids for ids, types, image in batch]
    decode = max(decode_rate(engine, [(batch[0][0], batch[0][1], [batch[0][2]])], args.new_tokens) for _ in range(3))
    torch.save({"logits": logits, "greedy": greedy}, Path(args.out).with_suffix(".pt"))
    Path(args.out).with_suffix(".json").write_text(json.dumps({
        "stored_bytes": stored_bytes(model), "load_s": load_s, "load_peak_mb": load_peak,
        "gen_peak_mb": _status_mb("VmHWM"), "peak_reset": reset,
        "prefill_tok_s": prefill_tokens / prefill_s, "decode_tok_s": decode,
    }))


# --- driver ------------------------------------------------------------------------------------------------


def run_scheme(path: Path, scheme: str, dtype: str, vision: bool, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--path", str(path), "--scheme", scheme, "--dtype", dtype,
           "--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens), "--out", str(out)]
    cmd += ["--quantize-vision"] if vision else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    result = json.loads(out.with_suffix(".json").read_text())
    if "error" not in result:
        result.update(torch.load(out.with_suffix(".pt")))
    return result


def quality(ref: dict, res: dict) -> dict[str, float]:
    scores = compare_next_token(torch.cat(ref["logits"]), torch.cat(res["logits"]))
    matches = [greedy_match_length(a, b) for a, b in zip(ref["greedy"], res["greedy"], strict=True)]
    return {**scores, "greedy_mean": sum(matches) / len(matches), "greedy_min": min(matches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model only, 4 prompts, 8 new tokens, bf16 rest")
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--schemes", default="fp32,bf16,int8,nf4,fp4,int4")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="dtype(s) of the unquantized parts")
    parser.add_argument("--quantize-vision", action="store_true", help="also rows with everything quantized")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    # worker mode (one scheme, called by the driver)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--path", "--scheme", "--dtype", "--out"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    if args.quick:
        args.models, args.dtypes, args.prompts, args.new_tokens = "tiny", "bfloat16", 4, 8
    paths = {"tiny": lambda: tiny_model_path("cogvlm2"), "mid": mid_checkpoint}
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} prompts={args.prompts} "
          f"new_tokens={args.new_tokens}")
    for model_name in args.models.split(","):
        path = paths[model_name]()
        dims = ModelDims.from_config(load_config(path))
        print(f"\n## {model_name}: {path}")
        print("| scheme | rest | weights MiB | ÷ sizes.py | load s | peak RSS load / gen MiB | prefill tok/s | "
              "decode tok/s | top-1 agree | KL mean / max | greedy match mean / min |")
        print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        rows = [(s, "-", False) for s in args.schemes.split(",") if s in UNQUANTIZED]
        for s in (s for s in args.schemes.split(",") if s not in UNQUANTIZED):
            for d in args.dtypes.split(","):
                rows += [(s, d, False)] + ([(s, d, True)] if args.quantize_vision else [])
        with tempfile.TemporaryDirectory() as tmp:
            ref = None
            for i, (scheme, dtype, vision) in enumerate(rows):
                res = run_scheme(path, scheme, dtype if dtype != "-" else "float32", vision, args,
                                 Path(tmp) / f"r{i}")
                label = scheme + (" +vision" if vision else "")
                if "error" in res:
                    print(f"| {label} | {dtype} | not run: {res['error']} |")
                    continue
                ref = ref or (res if scheme == "fp32" else None)
                predicted = weight_bytes(
                    dims, scheme, quantize_vision=vision, int8_library="torchao",
                    compute_bytes=torch.finfo(getattr(torch, dtype)).bits // 8 if dtype != "-" else 2)
                q = quality(ref, res) if ref else None
                qual = (f"{q['top1_agreement']:.3f} | {q['kl_mean']:.2e} / {q['kl_max']:.2e} | "
                        f"{q['greedy_mean']:.1f} / {q['greedy_min']} of {args.new_tokens}") if q else "- | - | -"
                stored = res["stored_bytes"]
                print(f"| {label} | {dtype} | {stored / 2**20:.2f} | {stored / predicted:.4f} | "
                      f"{res['load_s']:.2f} | {res['load_peak_mb']:.0f} / {res['gen_peak_mb']:.0f}"
                      f"{'' if res['peak_reset'] else ' (incl. load)'} | "
                      f"{res['prefill_tok_s']:.0f} | {res['decode_tok_s']:.1f} | {qual} |", flush=True)


if __name__ == "__main__":
    main()
