"""Backend selection: ATLAS_KERNELS, set_backend, and importing atlas.kernels without Triton."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import atlas.kernels as K
from atlas.kernels import divergence, logprob, reference

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter


@pytest.fixture(autouse=True)
def _reset_backend(monkeypatch):
    monkeypatch.delenv("ATLAS_KERNELS", raising=False)
    K.set_backend(None)
    yield
    K.set_backend(None)


def _count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **kw: calls.append(1) or original(*a, **kw))
    return calls


def test_env_var_and_set_backend(monkeypatch):
    assert K.get_backend() == "auto"
    monkeypatch.setenv("ATLAS_KERNELS", "torch")
    assert K.get_backend() == "torch"
    K.set_backend("triton")
    assert K.get_backend() == "triton"  # set_backend wins over the env var
    K.set_backend(None)
    monkeypatch.setenv("ATLAS_KERNELS", "cuda")
    with pytest.raises(ValueError, match="ATLAS_KERNELS"):
        K.token_logprobs(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown kernels backend"):
        K.set_backend("fast")


@pytest.mark.parametrize("backend,expect_triton", [("auto", False), ("torch", False), ("triton", True)])
def test_dispatch_on_cpu_tensors(monkeypatch, backend, expect_triton):
    K.set_backend(backend)
    tri_lp = _count_calls(monkeypatch, logprob, "logprob_rows")
    tri_jsd = _count_calls(monkeypatch, divergence, "jsd_rows")
    twin_lp = _count_calls(monkeypatch, reference, "logprob_rows")
    z = torch.randn(3, 20)
    K.token_logprobs(z, torch.tensor([1, 2, 3]))
    K.generalized_jsd(z, z.flip(0))
    assert (len(tri_lp), len(tri_jsd), len(twin_lp)) == ((1, 1, 0) if expect_triton else (0, 0, 1))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    K.set_backend("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        K.kl(torch.zeros(3), torch.zeros(3))


def test_public_calls_route_every_function():
    K.set_backend("torch")
    h, w = torch.randn(4, 8), torch.randn(30, 8)
    t = torch.tensor([0, 1, 2, -100])
    assert K.linear_token_logprobs(h, w, t).shape == (4,)
    assert K.linear_generalized_jsd(h, w, h, w).abs().max() < 1e-6  # a model matches itself
    assert K.kl(torch.zeros(3), torch.zeros(3)).abs().max() == 0


def test_import_and_cpu_use_without_triton():
    # A sys.modules entry of None makes `import triton` fail as it does where triton is not installed.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, atlas.kernels as K\n"
        "lp = K.token_logprobs(torch.randn(2, 5), torch.tensor([0, 4]))\n"
        "assert lp.shape == (2,)\n"
        "K.set_backend('triton')\n"
        "try:\n"
        "    K.token_logprobs(torch.randn(2, 5), torch.tensor([0, 4]))\n"
        "except ValueError as e:\n"
        "    assert 'not installed' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ATLAS_KERNELS"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(K.__file__).parents[2])
