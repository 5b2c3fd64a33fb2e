"""The static key/value cache the sampler decodes with.

One [B, KVH, S, D] tensor per layer for keys and one for values, plus which slots hold real tokens
(`valid_BS`). Prompts are left-padded so every row writes the same slots; attention masks pads out.
Two modes, one write path (`index_copy_` along the slot axis):
- eager: a forward of T tokens writes slots [pos, pos + T) and advances the python int `pos`; attention
  reads slots [0, pos + T);
- static (`start_static_decode`): every forward takes one token per row and writes the tensor slot
  `slot_t`, attention reads all S slots under valid & (slot <= slot_t): fixed shapes, so one compiled
  decode step replays (CUDA graphs) without recompiling.
Rows can be viewed strided (`every_nth_row`: prefill one prompt per group of n samples) and selected
(`select_rows`: fork a prompt's rows, drop finished ones).

Left out: paged blocks, sliding windows, quantised caches.
"""

from __future__ import annotations

import copy

import torch

from atlas.model.config import ModelConfig


class KVCache:
    """Static key/value buffers: k, v (one [B, KVH, S, D] per layer), plus which slots hold real tokens.

    A forward with the cache writes slots [pos, pos + T) for every row and advances `pos`; rows of
    different lengths are left-padded so all rows write the same slots, and `valid_BS` keeps pads out of
    attention. Every write is one `index_copy_` along the slot axis (`write`): of slots[pos:pos + T] in
    eager use, of the tensor slot `slot_t` in static decode. Memory: 2 * L * B * KVH * S * D * bytes(dtype).
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, *, dtype: torch.dtype,
                 device: torch.device | str):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        # one tensor per layer: a compiled decode step then updates whole graph inputs in place, where a
        # view of one [L, ...] tensor made torch.compile copy the entire cache at every layer
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.valid_BS = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.pos = 0
        self.has_pad = False  # whether any written slot is a pad (then attention needs a mask)
        self.slot_t: torch.Tensor | None = None  # the decode slot in static mode, as a [1] tensor
        self._slot = torch.zeros(1, dtype=torch.long, device=device)  # slot_t's storage, kept across resets
        self._slots = torch.arange(max_len, device=device)  # eager writes index slots[pos:pos + T]

    def reset(self) -> None:
        """Empty the cache for a new batch, keeping its buffers (and so their addresses). Stale keys and
        values stay in k/v but are never read: every slot is written before it becomes visible."""
        self.valid_BS.zero_()
        self.pos, self.has_pad, self.slot_t = 0, False, None

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def write(self, layer: int, k_BHTD: torch.Tensor, v_BHTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this forward's keys/values of `layer`; return the keys/values attention reads (every
        slot up to the last written one; in static decode all slots, the mask hides the unwritten)."""
        if self.slot_t is not None:
            slots, end = self.slot_t, self.max_len
        else:
            end = self.pos + k_BHTD.shape[2]
            slots = self._slots[self.pos:end]
        self.k[layer].index_copy_(2, slots, k_BHTD)
        self.v[layer].index_copy_(2, slots, v_BHTD)
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor the cache owns (what a compiled decode step reads and updates in place)."""
        return [*self.k, *self.v, self.valid_BS, self._slot, self._slots]

    def start_static_decode(self) -> None:
        """Fixed shapes from here on: each forward takes one token per row, writes it at slot `slot_t`
        (a tensor, so nothing a compiler would specialise on changes between steps) and attends over all
        max_len slots under valid & (slot <= slot_t). Unwritten slots are marked valid now: the causal
        term hides them until they are written. `pos` stops advancing; `slot_t` is the position."""
        self.valid_BS[:, self.pos:] = True
        self.slot_t = self._slot.fill_(self.pos)

    def every_nth_row(self, n: int) -> KVCache:
        """A cache over rows 0, n, 2n, ... of this one (strided views: writes land here)."""
        view = copy.copy(self)
        view.k, view.v = [k[::n] for k in self.k], [v[::n] for v in self.v]
        view.valid_BS = self.valid_BS[::n]
        return view

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (a 1-D index into the batch, repeats allowed): compaction and forking."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.valid_BS = self.valid_BS.index_select(0, rows)
