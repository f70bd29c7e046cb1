"""What a lens run can be asked to capture, by name: the side of a module call, the steps, the token selections
and the pooling of a config (and of ``coglens extract``'s options).

Light to import (no torch): ``coglens extract`` builds its help from here before anything heavy loads.
"""

from __future__ import annotations

from typing import Literal, get_args

IO = Literal["output", "input"]  # what of a module call an activation is: its output or its input
IO_VALUES: tuple[str, ...] = get_args(IO)
CAPTURE_CHOICES: tuple[str, ...] = (*IO_VALUES, "both")
STEP_CHOICES: tuple[str, ...] = ("prefill", "all")  # the prefill forward only, or every generation step too

Pooling = Literal["none", "mean", "max", "last"]
POOLING_CHOICES: tuple[str, ...] = get_args(Pooling)
TokenKeyword = Literal["all", "last", "image", "text", "boi", "eoi"]
TOKEN_KEYWORDS: tuple[str, ...] = get_args(TokenKeyword)
TOKEN_CHOICES = " | ".join((*TOKEN_KEYWORDS, "[positions]", "slice:START:STOP", "frame:N"))
