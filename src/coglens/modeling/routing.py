"""Token routing rules of CogVLM: which tokens take the vision expert, and the compressed position ids.

All are pure functions of ``token_type_ids`` (0 = language, 1 = vision) and the attention mask, shared by the
model, the processor, the engine and the lens so that every part of the package agrees on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LANGUAGE_TOKEN_TYPE = 0
VISION_TOKEN_TYPE = 1


def vision_expert_mask(token_type_ids: torch.Tensor) -> torch.Tensor:
    """Positions routed to the vision expert: vision-typed AND followed by a vision-typed token.

    So boi and the patches use the vision weights while eoi (the last token of the run) uses the language
    weights, exactly as the released models were trained.
    """
    mask = torch.zeros_like(token_type_ids, dtype=torch.bool)
    is_vision = token_type_ids == VISION_TOKEN_TYPE
    mask[:, :-1] = is_vision[:, :-1] & is_vision[:, 1:]
    return mask


def build_position_ids(token_type_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Position ids where every image costs three positions (boi, all patches, eoi) whatever its size.

    The first and last token of each vision run count as language; a position advances on every language token
    and on the first token of a vision run. Padded columns (mask 0) never advance it, but column 0 is always
    position 0, so the first real token of a left-padded row gets position 1 (as the original code does).
    """
    types = token_type_ids.clone()
    if attention_mask is not None:
        types[~attention_mask.bool()] = -1
    is_lang = types == LANGUAGE_TOKEN_TYPE
    is_vis = types == VISION_TOKEN_TYPE
    run_edge = torch.zeros_like(is_vis)
    run_edge[:, 1:] |= is_vis[:, 1:] & is_lang[:, :-1]
    run_edge[:, 0] |= is_vis[:, 0]
    run_edge[:, :-1] |= is_vis[:, :-1] & is_lang[:, 1:]
    run_edge[:, -1] |= is_vis[:, -1]
    is_lang = is_lang | run_edge
    is_vis = is_vis & ~run_edge
    step = torch.zeros_like(types, dtype=torch.long)
    step[:, 1:] = (is_lang[:, 1:] | (is_vis[:, 1:] & is_lang[:, :-1])).long()
    return step.cumsum(dim=-1)


def count_positions(
    token_type_ids: Sequence[int] | torch.Tensor, attention_mask: Sequence[int] | torch.Tensor | None = None
) -> int:
    """How many rotary positions one sequence occupies (its largest :func:`build_position_ids` + 1).

    Text tokens take one position each; a contiguous vision run takes at most three (its first token, all
    inner tokens together, its last token). Masked tokens take none, but a left-padded row starts at position
    1, as the original ``build_position_ids`` counts column 0 even when it is padding. ``attention_mask`` must
    have one entry per token type.
    """
    types = torch.as_tensor(token_type_ids, dtype=torch.long).view(1, -1)
    mask = None if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long).view(1, -1)
    if types.numel() == 0 or (mask is not None and not bool(mask.any())):
        return 0
    return int(build_position_ids(types, mask).max()) + 1
