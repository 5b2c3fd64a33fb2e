"""How one forward attends: the regimes, one function each, chosen in one place (`attention_context`).

    ctx, positions_BT = attention_context(input_ids_BT, attention_mask_BT, cu_seqlens, cache, flash, parents)

- packed (`cu_seqlens`, one row holding several sequences): each attends causally within itself, never
  across; positions restart per sequence. flash-attn's varlen kernel when the caller allows it (CUDA, half
  precision, installed); otherwise causal SDPA over each group of equal-length sequences (a block-diagonal
  mask over the whole row costs T^2: it made a packed SFT step 20x slower on CPU than padding). With
  `parents` (shared prefixes: a GRPO group's prompt once, its completions after it), a sequence may
  continue an earlier one in the row, its parent: it attends to all of the parent and causally to itself,
  and its positions continue the parent's (a completion of a prompt of length P starts at position P),
  so each sequence computes what parent + sequence would alone; the parent's keys and values serve every
  child, and in backward the children's gradients sum into them. One level (a parent has no parent);
  SDPA per group of sequences with equal (length, parent's length), never flash-attn's varlen kernel;
- static decode (a cache after `start_static_decode`): one token per row attends to every slot the cache
  shows it (valid and already written): fixed shapes for a compiled step;
- cached (a cache in eager mode): this forward's tokens attend to the cache's valid slots and causally to
  each other; positions are the cache's (each row counts its own real tokens: `KVCache.advance`);
- padded (`attention_mask_BT`, no cache): pads never serve as keys, a pad query attends to itself (its
  row is ignored, but must not be all -inf); positions count each row's real tokens (transformers'
  convention: a row's first real token is position 0, left pads sit at 0);
- causal: a plain batch, positions 0..T-1.

In the cached and padded regimes a mask is built only where one is needed: with no pad anywhere, a
forward that starts at slot 0 or takes one token per row is plain causal attention.

Left out: sliding windows, attention sinks, cross-attention.
"""

from __future__ import annotations

import torch

from atlas.model.cache import KVCache


class Segments:
    """n packed sequences of one length L whose parents share one length P (0: no parent)."""

    def __init__(self, idx_nL: torch.Tensor, parent_nP: torch.Tensor | None):
        self.idx_nL, self.parent_nP = idx_nL, parent_nP
        self.mask_LS = None
        if parent_nP is not None:  # all of the parent, then causal within the sequence
            L, P = idx_nL.shape[1], parent_nP.shape[1]
            own = torch.ones(L, L, dtype=torch.bool, device=idx_nL.device).tril()
            self.mask_LS = torch.cat([own.new_ones(L, P), own], dim=1)


class AttnContext:
    """What every layer's attention needs for one forward: built once, shared by all layers."""

    def __init__(self, mask=None, is_causal=False, cache=None, cu_seqlens=None, max_seqlen=None):
        self.mask, self.is_causal, self.cache = mask, is_causal, cache  # mask: True = attend, [B|1, 1, T, S]
        self.cu_seqlens, self.max_seqlen = cu_seqlens, max_seqlen  # packed rows through flash-attn
        # packed rows without flash-attn: per group of sequences of equal (length L, parent's length P), their
        # positions in the row [n, L], their parents' [n, P] (None without), the mask [L, P + L] (None: causal)
        self.segments: list[Segments] | None = None
        self.unpermute: torch.Tensor | None = None  # from the segments' concatenated order back to the row's
        self.checkpoint = False


def attention_context(input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor | None,
                      cu_seqlens: torch.Tensor | None, cache: KVCache | None, flash: bool,
                      parents: torch.Tensor | None = None) -> tuple[AttnContext, torch.Tensor]:
    """The regime of this forward (the module docstring) and its default positions [B, T]."""
    B, T = input_ids_BT.shape
    device = input_ids_BT.device
    if attention_mask_BT is not None and attention_mask_BT.shape != (B, T):
        raise ValueError(f"attention_mask_BT must have shape {(B, T)}, got {tuple(attention_mask_BT.shape)}")
    if parents is not None and cu_seqlens is None:
        raise ValueError("parents name sequences of a packed row: pass cu_seqlens too")
    if cu_seqlens is not None:
        if B != 1 or cache is not None or attention_mask_BT is not None:
            raise ValueError("cu_seqlens packs sequences into one row: use batch size 1, no cache, no mask")
        return packed(cu_seqlens.to(device=device, dtype=torch.int32), T, flash,
                      None if parents is None else parents.to(device=device, dtype=torch.long))
    if cache is not None:
        if cache.batch_size != B:
            raise ValueError(f"cache holds {cache.batch_size} rows but the input has {B}")
        return static_decode(cache, T) if cache.static else cached(cache, T, attention_mask_BT)
    if attention_mask_BT is not None:
        return padded(attention_mask_BT.bool())
    return AttnContext(is_causal=T > 1), torch.arange(T, device=device).expand(B, T)


def packed(cu_seqlens: torch.Tensor, T: int, flash: bool,
           parents: torch.Tensor | None = None) -> tuple[AttnContext, torch.Tensor]:
    if cu_seqlens[0] != 0 or cu_seqlens[-1] != T or (cu_seqlens.diff() <= 0).any():
        raise ValueError(f"cu_seqlens must rise strictly from 0 to the row length {T}, got {cu_seqlens}")
    device = cu_seqlens.device
    S = cu_seqlens.numel() - 1
    starts, lengths = cu_seqlens[:-1].tolist(), cu_seqlens.diff().tolist()
    parent = [-1] * S if parents is None else parents.tolist()
    if len(parent) != S or any(not -1 <= p < s or (p >= 0 and parent[p] != -1) for s, p in enumerate(parent)):
        raise ValueError(f"parents must name, for each of the {S} sequences, an earlier sequence without a parent "
                         f"of its own, or -1; got {parent}")
    t = torch.arange(T, device=device)
    segment = torch.searchsorted(cu_seqlens[1:], t, right=True)
    offset = torch.tensor([lengths[p] if p >= 0 else 0 for p in parent], device=device)  # a child continues
    positions = (t - cu_seqlens[segment] + offset[segment])[None]
    if flash and parents is None:
        return AttnContext(cu_seqlens=cu_seqlens, max_seqlen=int(cu_seqlens.diff().max())), positions
    buckets: dict[tuple[int, int], list[int]] = {}
    for s in range(S):
        buckets.setdefault((lengths[s], lengths[parent[s]] if parent[s] >= 0 else 0), []).append(s)
    segments = []
    for (L, P), members in buckets.items():
        idx = torch.tensor([starts[s] for s in members], device=device)[:, None] + torch.arange(L, device=device)
        parent_idx = None if P == 0 else (torch.tensor([starts[parent[s]] for s in members], device=device)[:, None]
                                          + torch.arange(P, device=device))
        segments.append(Segments(idx, parent_idx))
    order = torch.cat([seg.idx_nL.flatten() for seg in segments])
    ctx = AttnContext()
    ctx.segments, ctx.unpermute = segments, torch.empty_like(order).scatter_(0, order, t)
    return ctx, positions


def static_decode(cache: KVCache, T: int) -> tuple[AttnContext, torch.Tensor]:
    positions = cache.advance(T)
    return AttnContext(mask=cache.visible_BS()[:, None, None], cache=cache), positions


def cached(cache: KVCache, T: int, attention_mask_BT: torch.Tensor | None) -> tuple[AttnContext, torch.Tensor]:
    positions = cache.advance(T, attention_mask_BT)
    start, end = cache.pos - T, cache.pos
    if not cache.has_pad and (T == 1 or start == 0):
        return AttnContext(is_causal=T > 1, cache=cache), positions
    return AttnContext(mask=_causal_valid(start, end, cache.valid_BS[:, :end]), cache=cache), positions


def padded(valid_BT: torch.Tensor) -> tuple[AttnContext, torch.Tensor]:
    positions = (valid_BT.long().cumsum(-1) - 1).clamp(min=0)
    B, T = valid_BT.shape
    if bool(valid_BT.all()):
        return AttnContext(is_causal=T > 1), positions
    return AttnContext(mask=_causal_valid(0, T, valid_BT)), positions


def _causal_valid(start: int, end: int, valid_BS: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, S]: query slot q (start <= q < end) attends to key slot k <= q when k holds a real token,
    and always to itself."""
    device = valid_BS.device
    q_slot, k_slot = torch.arange(start, end, device=device), torch.arange(end, device=device)
    mask = (k_slot[None, :] <= q_slot[:, None]) & valid_BS[:, None, :]
    return (mask | (k_slot[None, :] == q_slot[:, None]))[:, None]
