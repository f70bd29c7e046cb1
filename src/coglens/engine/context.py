"""Does a request fit the model's context? The engine's side of :func:`coglens.processing.conversation.check_context`.

What runs out is rotary positions, not tokens: an image's span takes three positions whatever its token count,
so the check counts positions. The rule and its message are processing's; the engine reports a failure in its own
terms (:class:`ContextLengthExceededError`), for the engine and every front end.
"""

from __future__ import annotations

import torch

from ..processing.conversation import check_context
from ..processing.errors import ContextLengthError
from .errors import ContextLengthExceededError


def fit_new_tokens(token_type_ids: torch.Tensor, max_positions: int, requested: int | None, *,
                   param: str = "max_new_tokens") -> int:
    """``requested`` new tokens if they fit after the prompt, or all the room left when ``requested`` is None
    (at least one token must fit).

    Raises :class:`ContextLengthExceededError` naming ``param`` (the caller's name for the setting) otherwise.
    """
    wanted = 1 if requested is None else requested
    try:
        needed = check_context(token_type_ids, max_positions=max_positions, max_new_tokens=wanted, param=param)
    except ContextLengthError as error:
        raise ContextLengthExceededError(str(error), param=error.param) from None
    return wanted if requested is not None else max_positions - (needed - wanted)
