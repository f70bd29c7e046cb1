"""Does a request fit the model's context? One rule, and one message, for the engine and every front end.

What runs out is rotary positions, not tokens: an image's span takes three positions whatever its token count
(``count_positions``, derived from ``build_position_ids``), so the check counts positions.
"""

from __future__ import annotations

import torch

from ..processing.conversation import count_positions
from .errors import ContextLengthExceededError


def fit_new_tokens(token_type_ids: torch.Tensor, max_positions: int, requested: int | None, *,
                   param: str = "max_new_tokens") -> int:
    """``requested`` new tokens if they fit after the prompt, or all the room left when ``requested`` is None.

    Raises :class:`ContextLengthExceededError` naming ``param`` (the caller's name for the setting) otherwise.
    """
    positions = count_positions(token_type_ids)
    room = max_positions - positions
    if room < 1:
        raise ContextLengthExceededError(
            f"the prompt takes {positions} positions, the whole context of the model ({max_positions}); shorten it"
        )
    if requested is None:
        return room
    if requested > room:
        raise ContextLengthExceededError(
            f"{param}={requested} does not fit: the prompt takes {positions} of the model's {max_positions} "
            f"positions, so at most {room} new tokens fit", param=param)
    return requested
