"""Generation speed on a mid-size synthetic CogVLM2-style model (CPU by default); prints a table.

    python benchmarks/generate.py [--device cpu] [--threads N] [--new-tokens 32]

Measures load time and peak RSS while loading, image-encode time, prefill time, decode tokens/s at batch 1
and 8, and decode ms/token at prompt lengths 512 and 2048. Targets (issue "Model core", part 11): batch 8 gives
>= 4x the tokens/s of batch 1; ms/token at 2048 <= 1.3x that at 512; load peak RSS <= 1.2x the weights' size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from coglens import Cogvlm2Config, CogvlmForCausalLM
from coglens.engine import Engine, GenerationRequest, SamplingParams

MID_SIZE = dict(
    vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
    num_multi_query_heads=4, max_position_embeddings=4096,
    vision_config=dict(image_size=448, patch_size=14, hidden_size=768, intermediate_size=3072, num_heads=12,
                       num_hidden_layers=6),
)

LOAD_PROBE = """
import json, sys, time, torch
from coglens import CogvlmForCausalLM
def status_mb(field):  # VmHWM restarts at exec, unlike ru_maxrss, which a forked child inherits
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024
before = status_mb('VmRSS')
t = time.perf_counter()
model = CogvlmForCausalLM.from_pretrained(sys.argv[1], torch_dtype=getattr(torch, sys.argv[2]))
seconds = time.perf_counter() - t
for p in model.parameters():  # touch every weight: safetensors maps them lazily
    p.data.sum()
print(json.dumps({"seconds": seconds, "before_mb": before, "peak_mb": status_mb('VmHWM')}))
"""

class _NoText:
    """Detokenising is not what is measured here."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return ""


def build_checkpoint(folder: Path, dtype: torch.dtype) -> int:
    torch.manual_seed(0)
    model = CogvlmForCausalLM(Cogvlm2Config(**MID_SIZE)).to(dtype)
    model.save_pretrained(folder, max_shard_size="300MB")
    return sum(p.numel() * p.element_size() for p in model.parameters())


def measure_load(folder: Path, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(folder), dtype], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def decode_rate(engine: Engine, prompts: list[tuple[torch.Tensor, torch.Tensor, list]], new_tokens: int) -> float:
    """Generated tokens per second over the decode steps only (the prefill step is excluded).

    Runs the same work once untimed first: the first pass at a new size pays for allocating its buffers.
    """
    _decode_once(engine, prompts, new_tokens)
    return _decode_once(engine, prompts, new_tokens)


def _decode_once(engine: Engine, prompts: list[tuple[torch.Tensor, torch.Tensor, list]], new_tokens: int) -> float:
    for ids, types, images in prompts:
        engine.add(GenerationRequest(ids, types, images, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)))
    engine.step()  # prefill + first token of every request
    before = engine.stats.generated_tokens
    t = time.perf_counter()
    while engine.has_work():
        engine.step()
    return (engine.stats.generated_tokens - before) / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mid"
        weight_bytes = build_checkpoint(folder, dtype)
        load = measure_load(folder, args.dtype)
        growth = load["peak_mb"] - load["before_mb"]
        rows += [("weights", f"{weight_bytes / 2**20:.0f} MiB"),
                 ("load time", f"{load['seconds']:.2f} s"),
                 ("load peak RSS growth", f"{growth:.0f} MiB ({growth / (weight_bytes / 2**20):.2f}x weights)")]
        model = CogvlmForCausalLM.from_pretrained(folder, torch_dtype=dtype, device_map=args.device).eval()

    cfg = model.config
    engine = Engine(model, _NoText(), max_batch_size=8)
    dev = engine.device
    image = torch.randn(3, cfg.vision_config.image_size, cfg.vision_config.image_size)
    with torch.inference_mode():
        encode = timed(lambda: model.model.encode_images([[image]]))
    n_img = cfg.num_image_tokens
    text = torch.randint(3, cfg.vocab_size, (128,))
    ids = torch.cat([torch.tensor([1]), torch.zeros(n_img, dtype=torch.long), text])
    types = torch.cat([torch.zeros(1), torch.ones(n_img), torch.zeros(128)]).long()
    with torch.inference_mode():
        prefill = timed(lambda: model(input_ids=ids[None].to(dev), token_type_ids=types[None].to(dev),
                                      images=[[image]], logits_to_keep=1))
    rows += [(f"image encode (1 image, {cfg.vision_config.image_size} px)", f"{encode * 1e3:.0f} ms"),
             (f"prefill ({ids.numel()} tokens incl. {n_img} image)", f"{prefill * 1e3:.0f} ms")]

    image_prompt = (ids, types, [image])
    b1 = decode_rate(engine, [image_prompt], args.new_tokens)
    b8 = decode_rate(engine, [image_prompt] * 8, args.new_tokens)
    rows += [("decode tokens/s, batch 1", f"{b1:.1f}"),
             ("decode tokens/s, batch 8", f"{b8:.1f} ({b8 / b1:.1f}x batch 1)")]
    per_token = {}
    for length in (512, 2048):
        prompt = torch.randint(3, cfg.vocab_size, (length,))
        rate = decode_rate(engine, [(prompt, torch.zeros_like(prompt), [])], args.new_tokens)
        per_token[length] = 1e3 / rate
        rows.append((f"decode ms/token, prompt {length}", f"{per_token[length]:.1f}"))
    rows.append(("ms/token 2048 vs 512", f"{per_token[2048] / per_token[512]:.2f}x"))

    width = max(len(k) for k, _ in rows)
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'metric':<{width}} | value")
    print(f"{'-' * width}-|------")
    for k, v in rows:
        print(f"{k:<{width}} | {v}")


if __name__ == "__main__":
    main()
