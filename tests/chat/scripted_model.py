"""A tiny CogVLM2 checkpoint whose greedy answer is a text chosen in advance: a real model run we can predict.

The web and terminal tests need a grounding answer (``a cat[[086,540,412,760]]``) from an actual forward
pass, which a random tiny model never writes. We edit the weights of the tiny checkpoint so that the model is
a "bigram on (current token, previous token)" lookup table:

* every layer's attention output and MLP are zeroed except one attention in layer 0, and the image features
  are zeroed, so the residual stream of a text token is its embedding plus what that attention writes;
* the embedding of a token is ``c * e0 + a * e[1 + slot]``: a constant dimension plus a one-hot "slot"
  (one slot per distinct token of the answer, slot 0 for every other token);
* layer 0's query heads 0 and 2 look at the previous position only: their queries and keys are built from
  the constant dimension so that, after rotary, ``q . k`` is ``r^2 * sum_i cos((delta - 1) * theta_i)``,
  which peaks at delta = 1; the values copy the slot one-hot, and the output projection writes it to
  ``e[32 + slot]``;
* ``lm_head`` row of token X gets a weight on slot s of "current" when X follows a token of slot s in the
  answer, and on slot s of "previous" when the token before that is of slot s; the right next token then
  scores twice as high as any other (checked before writing, so an ambiguous text is refused).

The answer starts when the last two prompt tokens are not answer tokens (any question that does not end with
words of the answer), and ends with eos; with ``loop=True`` it starts over instead, forever (until
``max_new_tokens``): a long answer to interrupt. ``max_positions`` raises the context length for such answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from coglens.tiny import write_tiny_checkpoint

CONST, SLOT_VALUE, PREV_VALUE = 1.0, 1.0, 1.0  # residual magnitudes of the three parts
ROTARY_RADIUS = 20.0  # |q_i| = |k_i|: attention scores 100 * sum cos(...), margin >= 0.48 * 100 = 48 logits
LOGIT_SCALE = 5.0
PREV_DIM0 = 32  # residual dims 1..31: current slot; 32..63: previous slot
# outputs of every attention, MLP and the vision adapter, and the biases that would leak into zero inputs
SILENCED = ("dense.weight", "down_proj.weight", "dense_4h_to_h.weight", "query_key_value.bias", "vision.boi",
            "vision.eoi")


def write_scripted_checkpoint(
    answer: str, out_dir: Path, *, loop: bool = False, max_positions: int | None = None
) -> Path:
    write_tiny_checkpoint("cogvlm2", out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    if max_positions is not None:
        config["max_position_embeddings"] = max_positions
        (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    tokens = tokenizer.encode(answer, add_special_tokens=False).ids
    slots = {token: 1 + i for i, token in enumerate(dict.fromkeys(tokens))}  # slot 0: any other token
    # looping: after the last token come the first two again, whose state then continues the answer
    chain = tokens + (tokens[:2] if loop else [config["eos_token_id"]])
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = config["num_multi_query_heads"]
    head_dim = hidden // heads
    if len(slots) + 1 > min(PREV_DIM0 - 1, kv_heads * head_dim):
        raise ValueError(f"{len(slots)} distinct tokens in {answer!r}: too many for the residual layout")
    steps = _steps(chain, slots)
    _check_unambiguous(steps)

    shards = sorted(out_dir.glob("model-*.safetensors"))
    tensors = {name: tensor for shard in shards for name, tensor in load_file(shard).items()}
    for name, tensor in tensors.items():  # silence everything, then wire the lookup
        if name.endswith(SILENCED):
            tensor.zero_()
    rms = ((CONST**2 + SLOT_VALUE**2) / hidden) ** 0.5  # every token's embedding has the same RMS
    embed = torch.zeros_like(tensors["model.embed_tokens.weight"])
    embed[:, 0] = CONST
    embed[:, 1] = SLOT_VALUE
    for token, slot in slots.items():
        embed[token, 1] = 0.0
        embed[token, 1 + slot] = SLOT_VALUE
    tensors["model.embed_tokens.weight"] = embed

    prefix = "model.layers.0.self_attn."
    theta = tensors[prefix + "rotary_emb.inv_freq"].double()
    qkv = torch.zeros_like(tensors[prefix + "language_expert_query_key_value.weight"])
    dense = torch.zeros_like(tensors[prefix + "language_expert_dense.weight"])
    half = head_dim // 2
    const_in = CONST / rms  # the constant dimension after input_layernorm (weight 1)
    for group in range(kv_heads):
        head = group * (heads // kv_heads)  # the first query head reading this KV head
        q_rows, k_rows = head * head_dim, hidden + group * head_dim
        # q = r e^{-i theta}, k = r; after rotary Re(q conj(k) e^{i delta theta}) = r^2 cos((delta - 1) theta)
        qkv[q_rows:q_rows + half, 0] = ROTARY_RADIUS * torch.cos(theta).float() / const_in
        qkv[q_rows + half:q_rows + head_dim, 0] = -ROTARY_RADIUS * torch.sin(theta).float() / const_in
        qkv[k_rows:k_rows + half, 0] = ROTARY_RADIUS / const_in
        for slot in range(group * head_dim, min((group + 1) * head_dim, len(slots) + 1)):
            v_row = hidden + kv_heads * head_dim + group * head_dim + slot % head_dim
            qkv[v_row, 1 + slot] = rms / SLOT_VALUE  # the value is the slot one-hot, 1 at the slot
            dense[PREV_DIM0 + slot, head * head_dim + slot % head_dim] = PREV_VALUE
    tensors[prefix + "language_expert_query_key_value.weight"] = qkv
    tensors[prefix + "language_expert_dense.weight"] = dense

    tensors["model.norm.weight"] = torch.ones_like(tensors["model.norm.weight"])
    head_weight = torch.zeros_like(tensors["lm_head.weight"])
    for (current, previous), following in steps.items():
        head_weight[following, 1 + current] = LOGIT_SCALE
        head_weight[following, PREV_DIM0 + previous] = LOGIT_SCALE
    tensors["lm_head.weight"] = head_weight

    for shard in shards:
        names = load_file(shard).keys()
        save_file({name: tensors[name].contiguous() for name in names}, shard, metadata={"format": "pt"})
    return out_dir


def _steps(chain: list[int], slots: dict[int, int]) -> dict[tuple[int, int], int]:
    """(slot of the current token, slot of the previous one) -> the token to write next."""
    steps: dict[tuple[int, int], int] = {}
    previous, current = 0, 0  # the prompt's last two tokens: "other" tokens
    for token in chain:
        key = (current, previous)
        if steps.setdefault(key, token) != token:
            raise ValueError(f"the answer needs two next tokens after slots {key}: choose another text")
        previous, current = current, slots.get(token, 0)
    return steps


def _check_unambiguous(steps: dict[tuple[int, int], int]) -> None:
    """With logits = [current in C_X] + [previous in P_X], the scripted token must be the only one at 2."""
    follows_current: dict[int, set[int]] = {}
    follows_previous: dict[int, set[int]] = {}
    for (current, previous), token in steps.items():
        follows_current.setdefault(token, set()).add(current)
        follows_previous.setdefault(token, set()).add(previous)
    for (current, previous), token in steps.items():
        rivals = [other for other in follows_current if other != token
                  and current in follows_current[other] and previous in follows_previous[other]]
        if rivals:
            raise ValueError(f"tokens {rivals} would tie with {token} after slots {(current, previous)}")
