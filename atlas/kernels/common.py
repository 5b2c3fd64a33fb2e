"""Input checks and chunk sizing shared by the Triton kernels and their torch twins.

Both backends validate through these functions so that a bad call fails the same way (a `ValueError`
saying what was wrong and how to fix it) whichever backend runs it. Nothing here computes a result.
"""

import math

import torch

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# One logits tile holds at most this many elements (256 MiB in fp32, 128 MiB in bf16). Chunking over
# the N tokens then bounds the working memory of the linear (hidden @ W.T) paths by a few such tiles,
# whatever N is. At Qwen's vocab that is 432 rows: half as many rows cost ~3% more CPU time (skinnier
# GEMMs), twice as many would put the tiles near 10% of the naive path's working memory. Below ~16 rows
# a GEMM wastes most of its tile, so chunks never go under that.
CHUNK_ELEMENTS = 1 << 26
MIN_CHUNK_ROWS = 16


def check_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def check_beta(beta: float) -> float:
    if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise ValueError(f"beta must be a number in [0, 1] (0: forward KL, 1: reverse KL), got {beta!r}")
    return float(beta)


def check_logits(name: str, logits: torch.Tensor) -> None:
    if logits.dtype not in LOGIT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last (vocab) dimension, got shape {tuple(logits.shape)}")


def check_targets(targets: torch.Tensor, lead_shape: torch.Size, vocab: int, ignore_index: int) -> None:
    """Targets must index the vocab or equal ignore_index: an out-of-range id would read another row."""
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"targets must be an integer tensor of token ids, got {targets.dtype}")
    if targets.shape != lead_shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must equal the logits/hidden shape without its last "
            f"dimension, {tuple(lead_shape)}"
        )
    bad = ((targets < 0) | (targets >= vocab)) & (targets != ignore_index)
    if targets.device.type != "cpu":
        # reading the verdict on the host would sync the device at every call (the sampler scores every
        # decode step): an out-of-range id fails asynchronously instead, at the next sync
        torch._assert_async(~bad.any(), f"target ids outside [0, {vocab}) that are not ignore_index={ignore_index}")
        return
    if bool(bad.any()):
        raise ValueError(
            f"{int(bad.sum())} target ids lie outside [0, {vocab}) and are not ignore_index={ignore_index}; "
            f"e.g. {targets[bad].flatten()[:4].tolist()}. Mask padding with ignore_index."
        )


def check_linear(name: str, hidden: torch.Tensor, weight: torch.Tensor) -> None:
    check_logits(f"{name} hidden", hidden)
    if weight.dim() != 2:
        raise ValueError(f"{name} weight must be [V, H] (the LM head's weight), got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{name} hidden [..., H] and weight [V, H] disagree on H: {tuple(hidden.shape)} vs {tuple(weight.shape)}"
        )
    if hidden.dtype != weight.dtype or hidden.device != weight.device:
        raise ValueError(
            f"{name} hidden and weight must share dtype and device, got {hidden.dtype}/{hidden.device} and "
            f"{weight.dtype}/{weight.device}; cast one of them"
        )


def check_mask(mask: torch.Tensor | None, lead_shape: torch.Size) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool or mask.shape != lead_shape:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(lead_shape)} (True where the token counts), "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


def chunk_rows(n_rows: int, vocab: int, chunk_size: int | None) -> int:
    """Rows per [chunk, V] buffer: the caller's choice, else as few chunks as fit in CHUNK_ELEMENTS each,
    made equal (in multiples of MIN_CHUNK_ROWS): 512 rows at Qwen's vocab are 2 x 256, not 432 + 80, so the
    tile buffer is the size the work needs."""
    if chunk_size is not None:
        if not (isinstance(chunk_size, int) and chunk_size > 0):
            raise ValueError(f"chunk_size must be a positive int (rows per chunk) or None, got {chunk_size!r}")
        return chunk_size
    rows = max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // vocab // MIN_CHUNK_ROWS * MIN_CHUNK_ROWS)
    if n_rows <= rows:
        return max(1, n_rows)
    even = math.ceil(n_rows / math.ceil(n_rows / rows))
    return math.ceil(even / MIN_CHUNK_ROWS) * MIN_CHUNK_ROWS
