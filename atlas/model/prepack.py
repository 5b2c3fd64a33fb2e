"""Linear layers computed on prepacked weights for inference on CPU (the sampler's decode).

    with torch.no_grad(), prepacked(model):   # every large fp32 nn.Linear of model, for the duration
        logits = model(...)

Each nn.Linear of >= PACK_MIN_ELEMENTS weights (the LM head too) computes y = x W^T + b through torch's
oneDNN linear on W reordered once into oneDNN's blocked layout ("prepacked", what inductor's CPU freezing
does). Decode multiplies a few rows by every weight, where MKL's GEMM runs at a third to two thirds of
that rate (16 rows x a 49,152 x 576 head: 22.7 against 7.3 ms; BENCHMARKS.md, the decode step); under
2^17 weights oneDNN's ~17 us per call costs more than it saves. The sums run in another order than
the trainer's GEMM: the same numbers to fp32 rounding (BENCHMARKS.md, the sampler-trainer gap).

Left out: gradients (the packed weights carry none: use it under no_grad), other dtypes than fp32, CUDA,
sharded weights (gather them first), subclasses of nn.Linear; each is left to its own forward.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

PACK_MIN_ELEMENTS = 1 << 17  # the smallest weight packed


@contextlib.contextmanager
def prepacked(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """`model`'s packable linear layers on prepacked weights for the duration (the module docstring); a no-op
    when none is packable, oneDNN is missing or disabled, or `enabled` is False. Costs a copy of those
    weights and their reordering, ~0.15 s per call at 135M parameters."""
    linears = [m for m in model.modules() if type(m) is nn.Linear and m.weight.numel() >= PACK_MIN_ELEMENTS
               and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"
               and not hasattr(m.weight, "full_tensor")]  # a sharded (not gathered) weight is left as it is
    if not (enabled and linears and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        yield
        return
    if torch.is_grad_enabled():
        raise ValueError("prepacked weights carry no gradient: use them under torch.no_grad()")
    patched = []
    try:
        for m in linears:  # an instance attribute: nn.Module.__call__ finds it before the class's forward
            m.forward = functools.partial(_packed_linear, torch.ops.mkldnn._reorder_linear_weight(m.weight, 16),
                                          m.bias)
            patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward


def _packed_linear(weight, bias, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
