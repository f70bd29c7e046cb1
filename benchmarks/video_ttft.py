"""Time to first token for a 60 s 720p video on CPU, split into decode/sample/transform, prompt and prefill.

The model is a synthetic CogVLM2-Video with the real frame geometry (224 px, patch 14, 2x2 conv: 66 tokens per
frame) and a mid-size LM; the tokenizer is the tiny checkpoint's. The video comes from video_frames.py.

    python benchmarks/video_ttft.py [--strategy chat|base] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from video_frames import synthetic_video

from coglens import Cogvlm2VideoConfig, CogvlmForCausalLM
from coglens.engine import Engine, GenerationRequest, SamplingParams
from coglens.processing import build_conversation_input_ids, load_tokenizer
from coglens.processing.video import load_video
from coglens.tiny import tiny_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default="chat", choices=["chat", "base"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    video = synthetic_video(fps=30, gop=60)
    tiny = tiny_model_path("cogvlm2-video")
    probe = Cogvlm2VideoConfig.from_pretrained(tiny)
    tokenizer = load_tokenizer(tiny, config=probe)
    torch.manual_seed(0)
    config = Cogvlm2VideoConfig(
        vocab_size=probe.vocab_size, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
        num_attention_heads=16, num_multi_query_heads=4, max_position_embeddings=4096,
        bos_token_id=probe.bos_token_id, eos_token_id=probe.eos_token_id, pad_token_id=probe.pad_token_id,
        vision_config=dict(image_size=224, patch_size=14, hidden_size=768, intermediate_size=3072, num_heads=12,
                           num_hidden_layers=6),
    )
    model = CogvlmForCausalLM(config).eval()
    engine = Engine(model, tokenizer)

    rows: dict[str, list[float]] = {"load_video (decode, sample, transform)": [], "prompt layout": [],
                                    "prefill to first token": [], "time to first token": []}
    tokens = frames = 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        clip = load_video(video, strategy=args.strategy, image_size=224)
        t1 = time.perf_counter()
        inputs = build_conversation_input_ids(tokenizer, config=config, query="What happens in this video?",
                                              images=[clip.frames], template_version=args.strategy)
        t2 = time.perf_counter()
        request = GenerationRequest(inputs["input_ids"], inputs["token_type_ids"], inputs["images"],
                                    SamplingParams(max_new_tokens=1, ignore_eos=True))
        next(iter(engine.stream(request)))
        t3 = time.perf_counter()
        for key, value in zip(rows, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
            rows[key].append(value)
        tokens, frames = inputs["input_ids"].numel(), clip.frames.shape[0]

    print(f"60 s 1280x720 H.264, strategy={args.strategy}: {frames} frames, {tokens} prompt tokens "
          f"({config.num_image_tokens} per frame); LM hidden 1024 x 8 layers, vision 768 x 6 layers; "
          f"threads={torch.get_num_threads()}")
    width = max(map(len, rows))
    print(f"{'step':<{width}} | median s")
    print(f"{'-' * width}-|---------")
    for key, values in rows.items():
        print(f"{key:<{width}} | {statistics.median(values):.2f}")


if __name__ == "__main__":
    main()
