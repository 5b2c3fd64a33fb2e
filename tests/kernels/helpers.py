"""Float64 references, error measures and the two backends for the kernels tests."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import atlas.kernels as K

IGNORE = -100


class Backend:
    """atlas.kernels' public functions, each call run under one backend (the Triton one through the
    interpreter on CPU). The backward needs nothing: each call's autograd node keeps its backend's rows."""

    def __init__(self, kind: str):
        if kind == "triton":
            pytest.importorskip("triton")
        self.kind = kind

    def __getattr__(self, name: str):
        fn = getattr(K, name)

        def call(*args, **kwargs):
            K.set_backend(self.kind)
            try:
                return fn(*args, **kwargs)
            finally:
                K.set_backend(None)

        return call


BACKENDS = ["torch", "triton"]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute error relative to the largest reference magnitude (robust where ref ~ 0)."""
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def abs_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return (x.double() - ref.double()).abs().max().item()


def logprobs64(z: torch.Tensor, targets: torch.Tensor, temperature: float):
    """fp64 log p(target) and entropy of softmax(z / T); ignored targets give 0."""
    logp = (z.double() / temperature).log_softmax(-1)
    ignored = targets == IGNORE
    lp = logp.gather(-1, targets.masked_fill(ignored, 0)[..., None]).squeeze(-1).masked_fill(ignored, 0.0)
    ent = -(logp.exp() * logp).sum(-1).masked_fill(ignored, 0.0)
    return lp, ent


def random_targets(shape, vocab: int, gen: torch.Generator, n_ignored: int = 1) -> torch.Tensor:
    t = torch.randint(0, vocab, shape, generator=gen)
    t.view(-1)[:n_ignored] = IGNORE
    return t


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in bytes: Triton's interpreter moves buffers as byte tensors) any op makes."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel() * o.element_size())
        return out
