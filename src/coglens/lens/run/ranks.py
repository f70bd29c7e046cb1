"""Scale-out under ``torchrun``: which share of the samples this process extracts, and where it writes.

``torchrun --nproc_per_node N -m coglens.lens --config ...`` starts N processes with ``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK`` set. Rank k extracts the samples at positions k, k + N, k + 2N... of the
(deterministic) input order. A PostgreSQL output is shared by all ranks; a SQLite output becomes one shard per
rank, ``<stem>.rank<k><suffix>``, that ``coglens merge`` combines (SQLite allows one writer at a time). A
gloo process group (CPU only: it carries a few small control messages) orders run creation and lets rank 0
print one summary for all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

from coglens.lens.store.connection import database_url

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """From torchrun's environment variables; one process when they are unset."""
        try:
            return cls(
                rank=int(os.environ.get("RANK", 0)),
                world_size=int(os.environ.get("WORLD_SIZE", 1)),
                local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            )
        except ValueError as error:
            raise ValueError(
                f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (as torchrun sets them): {error}"
            ) from None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every world_size-th, starting at its rank."""
        return list(items[self.rank :: self.world_size])


def is_shared_database(output: str) -> bool:
    """True for a server database that every rank can write to at once (PostgreSQL)."""
    return database_url(output).get_backend_name() != "sqlite"


def shard_path(output: str, ranks: Ranks) -> str:
    """Where this rank writes: the output itself (one process, or a shared server), else its SQLite shard."""
    if not ranks.distributed or is_shared_database(output):
        return output
    path = Path(database_url(output).database or output)
    return str(path.with_name(f"{path.stem}.rank{ranks.rank}{path.suffix or '.db'}"))


class ProcessGroup:
    """A gloo process group for the run's duration (a no-op for one process, or if one is already set up)."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks
        self._owned = False

    def __enter__(self) -> ProcessGroup:
        if self.ranks.distributed and not dist.is_initialized():
            dist.init_process_group("gloo", rank=self.ranks.rank, world_size=self.ranks.world_size)
            self._owned = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned:
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.ranks.distributed:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on rank 0 (other ranks get an empty list)."""
        if not self.ranks.distributed:
            return [value]
        gathered: list[Any] | None = [None] * self.ranks.world_size if self.ranks.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered or []
