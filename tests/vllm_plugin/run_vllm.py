"""Runs in the vLLM environment as a subprocess (vLLM spawns workers: scripts need the __main__ guard).

``python run_vllm.py CHECKPOINT image|video|tp2`` prints one JSON line: for every case of ``cases.py``, the greedy
tokens of ``LLM.generate`` (all cases in one batch) and of ``LLM.chat`` (the chat cases through the plugin's
template). ``tp2``: the first two image cases only, with the model sharded over two tensor-parallel ranks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cases import HISTORY, MAX_TOKENS, QUERY, cases, clip, image  # noqa: E402


def main(checkpoint: str, mode: str) -> None:
    from vllm import LLM, SamplingParams

    from coglens.processing.template import render_prompt
    from coglens.vllm_plugin import chat_template_path

    video, sharded = mode == "video", mode == "tp2"
    if sharded:  # two worker processes, one rank each
        llm = LLM(checkpoint, dtype="float32", max_model_len=1024, seed=0, tensor_parallel_size=2)
    else:  # one process (no engine-core or worker processes): each vLLM process start costs CI ~20 s of imports;
        # 16-token prefill chunks cut prompts inside their image spans (chunked prefill must keep the routing);
        # 32-token cache blocks (the CPU default is 128, longer than these prompts) so prefixes can be reused
        llm = LLM(checkpoint, dtype="float32", max_model_len=1024, seed=0, distributed_executor_backend="uni",
                  max_num_batched_tokens=16, enable_prefix_caching=True, block_size=32)
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    chosen = cases(video)[:2] if sharded else cases(video)
    prompts = []
    for case in chosen:
        history = HISTORY if case.get("history") else None
        prompt: dict = {"prompt": render_prompt(case["template"], QUERY, history)}
        if "image" in case:
            prompt["multi_modal_data"] = {"image": image(case["image"])}
        if "video" in case:
            prompt["multi_modal_data"] = {"video": clip(seed=case["video"])}
            prompt["mm_processor_kwargs"] = {"template_version": case["template"]}
        prompts.append(prompt)
    generated = llm.generate(prompts, greedy)
    named = list(zip([case["name"] for case in chosen], generated, strict=True))
    out: dict = {name: list(result.outputs[0].token_ids) for name, result in named}
    out["prompt_ids"] = {name: list(result.prompt_token_ids) for name, result in named}
    if mode == "image":  # the chat path: OpenAI-style messages rendered by the plugin's template
        template = chat_template_path().read_text()
        url = {"type": "image_pil", "image_pil": image(3)}
        messages = [
            {"role": "user", "content": HISTORY[0][0]},
            {"role": "assistant", "content": HISTORY[0][1]},
            {"role": "user", "content": [url, {"type": "text", "text": QUERY}]},
        ]
        chats = llm.chat([messages, [{"role": "user", "content": QUERY}]], greedy, chat_template=template)
        out["chat-image-history"] = list(chats[0].outputs[0].token_ids)
        out["chat-text"] = list(chats[1].outputs[0].token_ids)
    if sharded:
        print("RESULT " + json.dumps(out), flush=True)
        return
    longest = max(range(len(chosen)), key=lambda i: len(generated[i].prompt_token_ids))  # > one cache block
    again = llm.generate(prompts[longest], greedy)[0]  # the same prompt again: served from the prefix cache
    out["cached"] = {"name": chosen[longest]["name"], "tokens": list(again.outputs[0].token_ids),
                     "num_cached_tokens": again.num_cached_tokens or 0}
    try:  # CogVLM takes one image (or clip) per conversation: a second one is refused before it runs
        media = {"video": [clip(), clip()]} if video else {"image": [image(0), image(1)]}
        llm.generate({"prompt": QUERY, "multi_modal_data": media}, greedy)
        out["two-media-error"] = None
    except Exception as exc:  # vLLM's VLLMValidationError
        out["two-media-error"] = f"{type(exc).__name__}: {exc}"
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
