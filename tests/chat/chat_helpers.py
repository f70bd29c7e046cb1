"""Constants and helpers shared by the chat tests (a module of its own: ``conftest`` names clash across
test folders, so tests import from here)."""

from __future__ import annotations

import os

from testkit import coglens_command

# The grounding answer of the scripted checkpoint: two boxes, over the two animals of ``scene_image``.
GROUNDING_ANSWER = "a cat[[086,560,400,900]] and a dog[[520,150,880,600]]"
LOOPING_ANSWER = "one two three four five six seven eight nine ten. "

def coglens_argv(*args: str) -> list[str]:
    """The real ``coglens`` entry point, as a process of its own (the chat tests drive it through a terminal)."""
    return [*coglens_command(), *args]


def child_env() -> dict[str, str]:
    """The test's environment (its COGLENS_CACHE) for a child ``coglens``, with a plain terminal."""
    return {**os.environ, "TERM": "dumb", "OMP_NUM_THREADS": "1", "COGLENS_LOG": "ERROR"}
