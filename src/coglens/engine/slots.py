"""The running batch in preallocated storage, so that a decode step has fixed shapes and can be compiled.

Per layer, keys and values live in ``(slots, kv_heads, capacity, head_dim)`` tensors; the attention mask, token
types, next positions and last tokens in ``(slots, ...)`` tensors beside them. Rows are left-padded to a shared
column count ``width``: a decode step writes column ``width`` of every row in place (one ``index_copy_`` per layer,
no reallocation, no concatenation). Storage grows by doubling, in rows and in columns, so a few sizes serve a
whole session.

A step reads a window of that storage: exactly ``rows x (width + 1)`` when it runs eagerly (the new token is the
last column, as the lens's selections expect), or bucketed sizes (rows and columns rounded up to powers of two)
when it runs compiled, so that a compiled graph, or a captured CUDA graph, is reused for many steps. Columns past
``width`` are masked and the rows past ``rows`` are ignored, so both windows compute the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..processing.padding import pad_left
from .cache import BatchKVCache

MIN_COLUMNS = 128  # the smallest column bucket: short prompts share one compiled shape


def bucket(n: int, minimum: int = 1) -> int:
    """The power of two >= ``n`` (and >= ``minimum``)."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


@dataclass
class StepWindow:
    """The inputs of one decode step: views into the slots' storage."""

    input_ids: torch.Tensor  # (B, 1)
    position_ids: torch.Tensor  # (B, 1)
    attention_mask: torch.Tensor  # (B, columns)
    rows: int  # the real rows among B (the rest are padding of a bucketed window)


class DecodeSlots:
    """Duck-types the KV cache the model calls (``update``, ``get_seq_length``, ``token_types``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rows = 0  # running rows: slots 0 .. rows-1
        self.width = 0  # columns holding history (left-padded)
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._mask = torch.zeros(0, 0, dtype=torch.long, device=device)
        self._types = torch.zeros(0, 0, dtype=torch.long, device=device)
        self.positions = torch.zeros(0, dtype=torch.long, device=device)  # each row's next position id
        self.last = torch.zeros(0, dtype=torch.long, device=device)  # each row's last token, fed next
        self._column = torch.zeros(1, dtype=torch.long, device=device)  # where the running step writes
        # the running step's (B, columns) mask: its shape is the window (a tensor's, so that a compiled step
        # can treat the column count as a dynamic size)
        self._step_mask = self._mask
        # what the lens reads: (B, columns) token types of the running step (see BatchKVCache.token_types)
        self.token_types: torch.Tensor | None = None

    # --- the cache protocol (called by the model inside a step) ------------------------------------------------

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, columns = self._step_mask.shape
        keys, values = self._k[layer_idx][:b], self._v[layer_idx][:b]
        column = self._column.to(keys.device)  # a no-op, but for layers placed on another GPU (device_map)
        keys.index_copy_(2, column, k)
        values.index_copy_(2, column, v)
        return keys[:, :, :columns], values[:, :, :columns]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Cached columns before the step's token, as the model's mask builder counts them."""
        return self._step_mask.shape[1] - 1

    # --- the engine's side ---------------------------------------------------------------------------------

    @property
    def capacity(self) -> tuple[int, int]:
        return tuple(self._mask.shape)  # type: ignore[return-value]

    def begin_step(self, *, bucketed: bool) -> StepWindow:
        """Mark column ``width`` as this step's token in every running row and return the step's window."""
        rows, col = self.rows, self.width
        b, columns = (bucket(rows), bucket(col + 1, MIN_COLUMNS)) if bucketed else (rows, col + 1)
        self._ensure(b, columns)
        self._mask[:rows, col] = 1
        self._types[:rows, col] = 0  # generated tokens are language tokens
        self._column.fill_(col)
        self._step_mask = self._mask[:b, :columns]
        self.token_types = self._types[:b, :columns]
        return StepWindow(self.last[:b, None], self.positions[:b, None], self._step_mask, rows)

    def end_step(self, next_tokens: torch.Tensor) -> None:
        self.width += 1
        self.positions[:self.rows] += 1
        self.last[:self.rows] = next_tokens

    def admit(self, cache: BatchKVCache, mask: torch.Tensor, types: torch.Tensor, next_positions: torch.Tensor,
              first_tokens: torch.Tensor) -> None:
        """Append prefilled rows (``cache``, ``mask``, ``types``: left-padded to the same width) below ours."""
        new, width = mask.shape
        if not self._k:  # the first rows: storage shaped like their cache, grown below
            self._k = [t.new_zeros(0, t.shape[1], 0, t.shape[3]) for t in cache.keys]
            self._v = [t.new_zeros(0, t.shape[1], 0, t.shape[3]) for t in cache.values]
        if width > self.width:  # their prompt is longer than our history: pad ours on the left
            self._shift_right(width - self.width)
        self._ensure(self.rows + new, self.width)
        rows = slice(self.rows, self.rows + new)
        for store, fresh in ((self._k, cache.keys), (self._v, cache.values)):
            for layer, t in zip(store, fresh, strict=True):
                layer[rows, :, :self.width] = pad_left(t, self.width, dim=2)
                layer[rows, :, self.width:] = 0  # a free slot's masked columns held what padding rows computed
        self._mask[rows] = 0
        self._mask[rows, :self.width] = pad_left(mask, self.width)
        self._types[rows, :self.width] = pad_left(types, self.width)
        self.positions[rows] = next_positions
        self.last[rows] = first_tokens
        self.rows += new

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order), then drop the columns that are padding in every row left."""
        if rows == list(range(len(rows))):  # the rows that left were the last ones: nothing moves
            self.rows = len(rows)
        else:
            self._gather(rows)
        if not rows:
            self.width = 0
            return
        used = self._mask[:self.rows, :self.width].any(dim=0)
        first = int(used.int().argmax()) if bool(used.any()) else self.width
        if first:
            self._shift_left(first)

    def _gather(self, rows: list[int]) -> None:
        index = torch.tensor(rows)
        for t in (*self._k, *self._v, self._mask, self._types, self.positions, self.last):
            t[:len(rows)] = t.index_select(0, index.to(t.device))
        self.rows = len(rows)

    # --- storage ---------------------------------------------------------------------------------------

    def _ensure(self, rows: int, columns: int) -> None:
        """Grow the storage (doubling) to hold ``rows`` x ``columns``."""
        have_rows, have_cols = self.capacity
        if rows <= have_rows and columns <= have_cols:
            return
        new_rows, new_cols = max(have_rows, bucket(rows)), max(have_cols, bucket(columns, MIN_COLUMNS))

        def grown(t: torch.Tensor, dim_rows: int, dim_cols: int | None) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim_rows] = new_rows
            if dim_cols is not None:
                shape[dim_cols] = new_cols
            out = t.new_zeros(shape)  # zeros, never garbage: masked columns still go through the matmuls
            index = [slice(None)] * t.dim()
            index[dim_rows] = slice(0, t.shape[dim_rows])
            if dim_cols is not None:
                index[dim_cols] = slice(0, t.shape[dim_cols])
            out[tuple(index)] = t
            return out

        self._k = [_for_compiled(grown(t, 0, 2)) for t in self._k]
        self._v = [_for_compiled(grown(t, 0, 2)) for t in self._v]
        self._mask, self._types = grown(self._mask, 0, 1), grown(self._types, 0, 1)
        self.positions, self.last = grown(self.positions, 0, None), grown(self.last, 0, None)

    def _shift_right(self, n: int) -> None:
        self._ensure(self.rows, self.width + n)
        self._move(0, n, self.width)
        self.width += n

    def _shift_left(self, n: int) -> None:
        self._move(n, 0, self.width - n)
        self.width -= n

    def _move(self, src: int, dst: int, length: int) -> None:
        """Copy columns ``src .. src+length`` of the running rows to ``dst``; the columns left behind are cleared."""
        rows = self.rows
        for store in (self._k, self._v):
            for layer in store:
                layer[:rows, :, dst:dst + length] = layer[:rows, :, src:src + length].clone()
        for t in (self._mask, self._types):
            t[:rows, dst:dst + length] = t[:rows, src:src + length].clone()
        cleared = slice(0, dst) if dst > src else slice(dst + length, src + length)
        self._mask[:rows, cleared] = 0
        self._types[:rows, cleared] = 0


def _for_compiled(storage: torch.Tensor) -> torch.Tensor:
    """Storage grows: its sizes are dynamic for a compiled step, and on CUDA its address is static (a captured
    CUDA graph writes into it in place instead of copying the cache in and out on every replay)."""
    torch._dynamo.maybe_mark_dynamic(storage, 0)
    torch._dynamo.maybe_mark_dynamic(storage, 2)
    if storage.is_cuda:
        torch._dynamo.mark_static_address(storage)
    return storage
