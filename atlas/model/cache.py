"""The static key/value cache the sampler decodes with, and the state of what it holds.

One [B, KVH, S, D] tensor per layer for keys and one for values, and, per row, which slots hold real
tokens (`valid_BS`) and how many it holds (`lengths_B`: the rope position its next token takes). Every
forward writes the same slots [pos, pos + T) of every row: prompts are left-padded, and a block appended
to rows that need different lengths (an agent's tool results) is right-padded; pad slots are marked
invalid and never attended to. The cache owns all of it: `advance(T, valid_BT)`, called once per forward
before the layers, records the new slots' validity, advances each row by its own count of real tokens
and returns their positions:

    positions_BT = lengths_B + (cumsum_t valid_BT - 1).clamp(min=0)      (a pad takes its row's last position)

then each layer's `write` stores its keys and values in those slots and returns what attention reads.
Two modes, one write (`index_copy_` along the slot axis):
- eager: a forward of T tokens writes slots [pos, pos + T), `pos` a python int; attention reads [0, pos);
- static (`start_static_decode`): every forward takes one token per row and writes slot `slot_t - 1`,
  `slot_t` a [1] tensor counting the slots written; attention reads all S slots under
  valid & (slot < slot_t): fixed shapes and no python state that changes, so one compiled decode step
  replays (CUDA graphs) without recompiling.
Groups of rows: `every_nth_row(n)` is a view over rows 0, n, 2n, ... that shares this cache's buffers
and cursor (a prompt prefilled once), and `fork(n)` then copies each group's first row into the other
n - 1 (its n samples continue from the same prefill). `select_rows` keeps some rows (compaction, or
copies of a row), `grow` adds slots (a conversation that goes on longer than planned).

Left out: paged blocks, sliding windows, quantised caches, rows that write different slots.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from atlas.model.config import ModelConfig


@dataclass
class _Cursor:
    """The state every view of one cache shares: the next eager slot, and whether any written slot is a pad
    (then attention needs a mask)."""

    pos: int = 0
    has_pad: bool = False


class KVCache:
    """Static key/value buffers and what they hold; see the module docstring. Memory: 2 * L * B * KVH * S * D
    * bytes(dtype), plus B * S bools and B int64s."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, *, dtype: torch.dtype,
                 device: torch.device | str):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        # one tensor per layer: a compiled decode step then updates whole graph inputs in place, where a
        # view of one [L, ...] tensor made torch.compile copy the entire cache at every layer
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.valid_BS = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.lengths_B = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.cursor = _Cursor()
        self.slot_t: torch.Tensor | None = None  # static mode: slots written so far, a [1] tensor
        self._slot = torch.zeros(1, dtype=torch.long, device=device)  # slot_t's storage, kept across resets
        self._slots = torch.arange(max_len, device=device)  # eager writes index slots[start:pos]
        self._start = 0  # where this forward writes (eager)

    @property
    def pos(self) -> int:
        """Slots written so far (eager mode)."""
        return self.cursor.pos

    @property
    def has_pad(self) -> bool:
        return self.cursor.has_pad

    @property
    def static(self) -> bool:
        return self.slot_t is not None

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def reset(self) -> None:
        """Empty the cache for a new batch, keeping its buffers (and so their addresses). Stale keys and
        values stay in k/v but are never read: every slot is written before it becomes visible."""
        self.valid_BS.zero_()
        self.lengths_B.zero_()
        self.cursor.pos, self.cursor.has_pad, self.slot_t = 0, False, None

    def advance(self, T: int, valid_BT: torch.Tensor | None = None) -> torch.Tensor:
        """Take the next T slots of every row for this forward (`valid_BT`: 0/1, None for all real); return
        the positions [B, T] of its tokens. Eager mode: raises ValueError when the slots run out."""
        if self.static:
            if T != 1:
                raise ValueError(f"static decode takes one token for each of the cache's {self.batch_size} rows")
            positions = self.lengths_B[:, None].clone()
            self.lengths_B.add_(1)
            self.slot_t.add_(1)
            return positions
        start, end = self.pos, self.pos + T
        if end > self.max_len:
            raise ValueError(f"cache overflow: writing slots up to {end} in a cache of {self.max_len}")
        if valid_BT is None:
            self.valid_BS[:, start:end] = True
            positions = self.lengths_B[:, None] + torch.arange(T, device=self.lengths_B.device)
            self.lengths_B.add_(T)
        else:
            valid = valid_BT.to(torch.bool)
            self.valid_BS[:, start:end] = valid
            self.cursor.has_pad = self.cursor.has_pad or not bool(valid.all())
            positions = self.lengths_B[:, None] + (valid.long().cumsum(-1) - 1).clamp(min=0)
            self.lengths_B.add_(valid.sum(-1))
        self._start, self.cursor.pos = start, end
        return positions

    def write(self, layer: int, k_BHTD: torch.Tensor, v_BHTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this forward's keys/values of `layer` in the slots `advance` took; return the keys/values
        attention reads (every slot up to the last written one; in static decode all slots, the mask hides
        the unwritten)."""
        if self.static:
            slots, end = self.slot_t - 1, self.max_len
        else:
            slots, end = self._slots[self._start:self.pos], self.pos
        self.k[layer].index_copy_(2, slots, k_BHTD)
        self.v[layer].index_copy_(2, slots, v_BHTD)
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def visible_BS(self) -> torch.Tensor:
        """Static mode: the slots a decode step attends to, valid & (slot < slot_t)."""
        return self.valid_BS & (self._slots < self.slot_t)

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor the cache owns (what a compiled decode step reads and updates in place)."""
        return [*self.k, *self.v, self.valid_BS, self.lengths_B, self._slot, self._slots]

    def start_static_decode(self) -> None:
        """Fixed shapes from here on: each forward takes one token per row, writes it at slot `slot_t`
        (a tensor, so nothing a compiler would specialise on changes between steps) and attends over all
        max_len slots under valid & (slot < slot_t). Unwritten slots are marked valid now: the causal
        term hides them until they are written. `pos` stops advancing; `slot_t` counts."""
        self.valid_BS[:, self.pos:] = True
        self.slot_t = self._slot.fill_(self.pos)

    def every_nth_row(self, n: int) -> KVCache:
        """A view over rows 0, n, 2n, ... of this cache: its writes, validity, lengths and cursor are this
        cache's. Prefill each prompt through it once, then `fork(n)`."""
        view = copy.copy(self)
        view.k, view.v = [k[::n] for k in self.k], [v[::n] for v in self.v]
        view.valid_BS, view.lengths_B = self.valid_BS[::n], self.lengths_B[::n]
        return view

    def fork(self, n: int) -> None:
        """Copy the first row of each group of n rows into the group's other n - 1: n samples continue from
        one prefill (written through `every_nth_row(n)`)."""
        if n == 1:
            return
        B, H, S, D = self.k[0].shape
        for buf in self.k + self.v:
            groups = buf.view(B // n, n, H, S, D)
            groups[:, 1:] = groups[:, :1]
        for state in (self.valid_BS.view(B // n, n, S), self.lengths_B.view(B // n, n)):
            state[:, 1:] = state[:, :1]

    def grow(self, max_len: int) -> None:
        """More slots (eager mode): every buffer reallocated at `max_len` slots, what it holds kept."""
        extra = max_len - self.max_len
        if extra <= 0:
            return
        pad = lambda t: torch.cat([t, t.new_zeros(*t.shape[:2], extra, t.shape[3])], dim=2)  # noqa: E731
        self.k, self.v = [pad(k) for k in self.k], [pad(v) for v in self.v]
        self.valid_BS = torch.cat([self.valid_BS, self.valid_BS.new_zeros(self.batch_size, extra)], dim=1)
        self._slots = torch.arange(max_len, device=self._slots.device)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (a 1-D index into the batch, repeats allowed): compaction, forking."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.valid_BS = self.valid_BS.index_select(0, rows)
        self.lengths_B = self.lengths_B.index_select(0, rows)
