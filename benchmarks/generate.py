"""Generation speed on a mid-size synthetic CogVLM2-style model, eager against compiled; prints tables.

    python benchmarks/generate.py [--device cpu] [--threads N] [--dtypes float32,bfloat16] [--new-tokens 32]
    python benchmarks/generate.py --llama-cpp SRC --llama-bench BIN   # also llama.cpp on the same weights

Per dtype: load time and peak RSS, image encode, prefill tokens/s (100 and 2 000 text tokens, an image prompt);
per dtype and mode (eager / ``compile=True``): decode tokens/s at batch 1 (prompts of 100 and 2 000 tokens and an
image prompt) and batch 8, against a bandwidth ceiling measured here: weight bytes a decode token reads (the
language experts, norms and LM head) divided by the rate at which this machine streams a 1 GiB tensor.
Targets (issue 18): batch-1 decode >= 80 % of the ceiling; decode at 2 000 tokens costs <= 1.1x decode at 100;
batch 8 >= 5x batch 1; at least as fast as llama.cpp at the same precision (F32 / float32, F16 / bfloat16).

``--llama-cpp SRC --llama-bench BIN`` (a llama.cpp source tree and its built ``llama-bench``; recipe in
``llamacpp.py``) also builds the same language model laid out as CogVLM-1 (llama.cpp runs CogVLM-1 only: no
grouped-query attention), converts it to GGUF and times both programs on it: decode from a short prompt (as
llama-bench's tg test) and prefill of 100 tokens.
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

from coglens import Cogvlm2Config, CogvlmConfig, CogvlmForCausalLM
from coglens.engine import Engine, GenerationRequest, SamplingParams

LANGUAGE = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                num_attention_heads=16, max_position_embeddings=4096)
VISION = dict(image_size=448, patch_size=14, hidden_size=768, intermediate_size=3072, num_heads=12,
              num_hidden_layers=6)
MID_SIZE = dict(**LANGUAGE, num_multi_query_heads=4, vision_config=VISION)
LONG, SHORT = 2000, 100

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


def build_checkpoint(folder: Path, dtype: torch.dtype, config: CogvlmConfig) -> None:
    torch.manual_seed(0)
    CogvlmForCausalLM(config).to(dtype).save_pretrained(folder, max_shard_size="300MB")


def measure_load(folder: Path, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(folder), dtype], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def stream_rate(device: str) -> float:
    """Bytes per second ``device`` reads a 1 GiB tensor at (a sum: one pass, no writes): the ceiling."""
    x = torch.ones(256 << 20, dtype=torch.float32, device=device)

    def read() -> None:
        x.sum().item()  # .item() waits for a GPU

    read()
    return x.numel() * 4 / min(_seconds(read) for _ in range(5))


def decode_bytes(model: CogvlmForCausalLM) -> int:
    """Weight bytes one decode token reads: language experts, norms and LM head; not the vision tower or the
    vision experts (a generated token is a language token), one embedding row (ignored)."""
    skip = ("model.vision.", "vision_expert", "vision_mlp", "embed_tokens")
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters() if not any(s in name for s in skip))


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    return min(_seconds(fn) for _ in range(repeat))


def decode_rate(engine: Engine, prompts: list[tuple[torch.Tensor, torch.Tensor, list]], new_tokens: int) -> float:
    """Generated tokens per second over the decode steps only (the prefill step is excluded); the better of two
    runs (the first run at a new size also pays for allocating its buffers)."""
    return max(_decode_once(engine, prompts, new_tokens) for _ in range(2))


def _decode_once(engine: Engine, prompts: list[tuple[torch.Tensor, torch.Tensor, list]], new_tokens: int) -> float:
    for ids, types, images in prompts:
        engine.add(GenerationRequest(ids, types, images, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)))
    engine.step()  # prefill + first token of every request
    before = engine.stats.generated_tokens
    t = time.perf_counter()
    while engine.has_work():
        engine.step()
    return (engine.stats.generated_tokens - before) / (time.perf_counter() - t)


def text_prompt(n: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    ids = torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(n))
    return ids, torch.zeros_like(ids), []


def image_prompt(model: CogvlmForCausalLM) -> tuple[torch.Tensor, torch.Tensor, list]:
    cfg = model.config
    n_img, text = cfg.num_image_tokens, 64
    ids = torch.cat([torch.tensor([1]), torch.zeros(n_img, dtype=torch.long), text_prompt(text, cfg.vocab_size)[0]])
    types = torch.cat([torch.zeros(1), torch.ones(n_img), torch.zeros(text)]).long()
    size = cfg.vision_config.image_size
    return ids, types, [torch.randn(3, size, size, generator=torch.Generator().manual_seed(0))]


def prefill_rows(model: CogvlmForCausalLM, device: str) -> list[tuple[str, str]]:
    cfg = model.config
    rows = []
    image = image_prompt(model)
    with torch.inference_mode():
        encode = timed(lambda: model.model.encode_images([image[2]]))
        rows.append((f"image encode (1 image, {cfg.vision_config.image_size} px)", f"{encode * 1e3:.0f} ms"))
        for name, (ids, types, images) in ((f"{SHORT} text tokens", text_prompt(SHORT, cfg.vocab_size)),
                                           (f"{LONG} text tokens", text_prompt(LONG, cfg.vocab_size)),
                                           (f"image + 64 text ({image[0].numel()} tokens)", image)):
            seconds = timed(lambda ids=ids, types=types, images=images: model(
                input_ids=ids[None].to(device), token_type_ids=types[None].to(device), images=[images],
                logits_to_keep=1), repeat=2)
            rows.append((f"prefill tokens/s, {name}", f"{ids.numel() / seconds:.0f}"))
    return rows


def decode_row(model: CogvlmForCausalLM, compile: bool, new_tokens: int, ceiling: float,
               batches: list[int]) -> dict[str, float]:
    engine = Engine(model, _NoText(), max_batch_size=max(batches), compile=compile)
    warm = _seconds(engine.warm_up)
    vocab = model.config.vocab_size
    b1 = f"b1 @{SHORT}"
    row = {"warm-up s": warm,
           b1: decode_rate(engine, [text_prompt(SHORT, vocab)], new_tokens),
           f"b1 @{LONG}": decode_rate(engine, [text_prompt(LONG, vocab)], new_tokens),
           "b1 image": decode_rate(engine, [image_prompt(model)], new_tokens)}
    for b in batches:
        if b > 1:
            row[f"b{b} @{SHORT}"] = decode_rate(engine, [text_prompt(SHORT + i, vocab) for i in range(b)], new_tokens)
    row["% ceiling"] = 100 * row[b1] / ceiling
    row[f"{LONG}/{SHORT} cost"] = row[b1] / row[f"b1 @{LONG}"]
    for b in batches:
        if b > 1:
            row[f"b{b}/b1"] = row[f"b{b} @{SHORT}"] / row[b1]
    return row


GGUF_TYPE = {"float32": "f32", "bfloat16": "f16", "float16": "f16"}  # bf16 pairs with F16: llama.cpp's fast one


def compare_llama_cpp(tree: Path, llama_bench: Path, dtypes: list[str], new_tokens: int) -> None:
    """llama.cpp and CogLens on the same CogVLM-1 weights: decode from an 8-token prompt and 100-token prefill."""
    from llamacpp import bench, convert

    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cogvlm1"
        build_checkpoint(folder, torch.float32, CogvlmConfig(**LANGUAGE, vision_config={**VISION, "image_size": 224}))
        for dtype_name in dtypes:
            outtype = GGUF_TYPE[dtype_name]
            gguf = convert(folder, tree, outtype, Path(tmp) / "gguf")
            theirs = bench(llama_bench, gguf, threads, 0, new_tokens)
            their_prefill = bench(llama_bench, gguf, threads, SHORT, 0)
            gguf.unlink()
            ours, prefill = _coglens_rates(folder, getattr(torch, dtype_name), new_tokens)
            rows.append([f"{dtype_name} vs {outtype.upper()}", f"{theirs:.1f}", f"{ours['eager']:.1f}",
                         f"{ours['compiled']:.1f}", f"{ours['compiled'] / theirs:.2f}x", f"{their_prefill:.0f}",
                         f"{prefill:.0f}"])
    print_table(f"CogVLM-1 layout, same weights: CogLens vs llama.cpp ({threads} threads, tokens/s)",
                ["precision", "llama.cpp decode", "CogLens eager", "CogLens compiled", "compiled / llama.cpp",
                 f"llama.cpp prefill {SHORT}", f"CogLens prefill {SHORT}"], rows)


def _coglens_rates(folder: Path, dtype: torch.dtype, new_tokens: int) -> tuple[dict[str, float], float]:
    """CogLens's decode tokens/s (eager and compiled, from an 8-token prompt) and prefill tokens/s (100 tokens)."""
    model = CogvlmForCausalLM.from_pretrained(folder, torch_dtype=dtype).eval()
    prompt = text_prompt(8, model.config.vocab_size)
    ours = {}
    for mode in ("eager", "compiled"):
        engine = Engine(model, _NoText(), max_batch_size=1, compile=mode == "compiled")
        engine.warm_up()
        ours[mode] = decode_rate(engine, [prompt], new_tokens)
    ids, types, _ = text_prompt(SHORT, model.config.vocab_size)
    with torch.inference_mode():
        seconds = timed(lambda: model(input_ids=ids[None], token_type_ids=types[None], logits_to_keep=1), repeat=2)
    return ours, SHORT / seconds


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for r in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--batches", default="1,8", help="batch sizes of the decode table (GPU: 1,8,32)")
    parser.add_argument("--llama-cpp", type=Path, default=None, help="a llama.cpp source tree (the converter)")
    parser.add_argument("--llama-bench", type=Path, default=None, help="llama.cpp's built llama-bench")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rate = stream_rate(args.device)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device={args.device} ({name}) threads={torch.get_num_threads()} torch={torch.__version__} "
          f"streaming read={rate / 1e9:.1f} GB/s")
    decode: list[list[str]] = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "mid"
            build_checkpoint(folder, dtype, Cogvlm2Config(**MID_SIZE))
            load = measure_load(folder, dtype_name) if args.device == "cpu" else None
            model = CogvlmForCausalLM.from_pretrained(folder, torch_dtype=dtype, device_map=args.device).eval()
        per_token = decode_bytes(model)
        rows = [("weights read per decode token", f"{per_token / 2**20:.0f} MiB")]
        if load:
            growth = load["peak_mb"] - load["before_mb"]
            size = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
            rows += [("load time", f"{load['seconds']:.2f} s"),
                     ("load peak RSS growth", f"{growth:.0f} MiB ({growth / size:.2f}x weights)")]
        rows += prefill_rows(model, args.device)
        print_table(f"{dtype_name}: load and prefill", ["metric", "value"], [list(r) for r in rows])
        ceiling = rate / per_token
        for mode in args.modes.split(","):
            row = decode_row(model, mode == "compiled", args.new_tokens, ceiling,
                             [int(b) for b in args.batches.split(",")])
            decode.append([dtype_name, mode, f"{ceiling:.1f}", *(f"{v:.1f}" if "/" not in k
                                                                    else f"{v:.2f}x" for k, v in row.items())])
            header = ["dtype", "mode", "ceiling tok/s", *row]
        del model
    print_table(f"decode tokens/s ({args.new_tokens} new tokens)", header, decode)
    if args.llama_cpp is not None:
        if args.llama_bench is None:
            parser.error("--llama-cpp needs --llama-bench (the llama-bench binary built from that tree)")
        compare_llama_cpp(args.llama_cpp, args.llama_bench, args.dtypes.split(","), args.new_tokens)


if __name__ == "__main__":
    main()
