"""Memory-frugal log-probabilities, entropy, KL estimators and generalized JSD over large vocabularies.

Public functions (all differentiable; outputs fp32, one value per token):
  token_logprobs(logits [..., V], targets [...])                     -> log p(target) [...] (+ entropy)
  linear_token_logprobs(hidden [..., H], weight [V, H], targets [...]) -> the same from hidden states,
      computing hidden @ weight.T in chunks of tokens: no [N, V] tensor exists, forward or backward
  generalized_jsd(student_logits, teacher_logits, beta, temperature)   -> JSD_beta [...] (TRL convention)
  linear_generalized_jsd(student_hidden, student_weight, teacher_hidden, teacher_weight, ...) -> the same,
      chunked, so GKD never holds two [N, V] logits tensors
  kl(logp, ref_logp, estimator="k1"|"k2"|"k3")                        -> per-token KL estimate
The math is in per-row primitives, in reference.py (torch twins) and logprob.py / divergence.py (Triton);
functions.py holds the autograd plumbing both share; each call here picks the backend. Conventions:
targets == ignore_index (default -100) give logprob 0, entropy 0 and no gradient; `mask` (True where a
token counts) does the same for the JSD; the entropy is that of softmax(logits / T), the distribution the
log-probabilities come from, and is differentiable; teachers are constants (no gradient reaches them).
Softmax math runs in fp32 whatever the input dtype; the chunked paths' matmuls run in the input dtype;
gradients come back in the input dtype.

Backend: env ATLAS_KERNELS=auto|triton|torch, or set_backend(...), read by get_backend(). 'auto' runs
Triton on CUDA tensors (when triton is installed) and the torch twin elsewhere; 'triton' on CPU tensors
runs Triton's interpreter and so needs TRITON_INTERPRET=1 set before atlas.kernels first uses Triton
(that is how the tests run it). Triton is imported only when a Triton path is first taken, so this
package imports on machines without it.

Left out: sequence packing, vocabulary-parallel (tensor-parallel) LM heads, fp64 outputs.
"""

import functools
import os
import warnings

import torch

from atlas.kernels import functions, reference

BACKENDS = ("auto", "triton", "torch")
_backend: str | None = None  # None: read ATLAS_KERNELS at each call, so the env var can change in tests
_warned_no_triton = False


def set_backend(backend: str | None) -> None:
    """Pick 'auto', 'triton' or 'torch' for every later call; None goes back to the ATLAS_KERNELS env var."""
    global _backend
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown kernels backend {backend!r}: choose one of {BACKENDS}")
    _backend = backend


def get_backend() -> str:
    """The configured backend: set_backend's choice, else ATLAS_KERNELS, else 'auto'."""
    if _backend is not None:
        return _backend
    backend = os.environ.get("ATLAS_KERNELS", "auto").strip().lower() or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"ATLAS_KERNELS={backend!r} is not a kernels backend: set it to one of {BACKENDS}")
    return backend


@functools.cache
def _triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _use_triton(x: torch.Tensor) -> bool:
    global _warned_no_triton
    backend = get_backend()
    if backend == "torch":
        return False
    if backend == "auto" and not x.is_cuda:
        return False
    has_triton = _triton_installed()
    if backend == "auto":
        if not has_triton and not _warned_no_triton:
            _warned_no_triton = True
            warnings.warn("atlas.kernels: triton is not installed, CUDA tensors use the slower torch twin",
                          stacklevel=3)
        return has_triton
    if not has_triton:
        raise ValueError("ATLAS_KERNELS/set_backend asks for 'triton' but triton is not installed: "
                         "pip install triton, or use 'auto'/'torch'")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend 'triton' on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
                         "before the first kernel call, or use backend 'auto'/'torch' on CPU")
    return True


def _logprob_backend(x: torch.Tensor):
    """The module whose log-probability row primitives run for `x`: Triton's, or the torch twin."""
    if _use_triton(x):
        from atlas.kernels import logprob

        return logprob
    return reference


def _divergence_backend(x: torch.Tensor):
    """The module whose JSD row primitives and KL estimators run for `x`: Triton's, or the torch twin."""
    if _use_triton(x):
        from atlas.kernels import divergence

        return divergence
    return reference


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    ignore_index: int = -100,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(logits / T)[target] as fp32 [...]; with return_entropy, (logprobs, entropy)."""
    rows = _logprob_backend(logits)
    return functions.token_logprobs(logits, targets, temperature, ignore_index, return_entropy,
                                    rows.logprob_rows, rows.logprob_rows_backward_)


def linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    ignore_index: int = -100,
    return_entropy: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """token_logprobs(hidden @ weight.T, targets, T) without the [N, V] logits; chunk_size rows at a time
    (default: as many as fit a 2^26-element tile). Gradients reach hidden and weight."""
    rows = _logprob_backend(hidden)
    return functions.linear_token_logprobs(hidden, weight, targets, temperature, ignore_index, return_entropy,
                                           chunk_size, rows.logprob_rows, rows.logprob_rows_backward_)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    *,
    mask: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Per-token generalized JSD summed over the vocab, fp32 [...], TRL's convention (beta = 0: KL(p_T || p_S),
    beta = 1: KL(p_S || p_T)); normalize=True divides by beta (1 - beta), continuous on [0, 1]."""
    rows = _divergence_backend(student_logits)
    return functions.generalized_jsd(student_logits, teacher_logits, beta, temperature, mask, normalize,
                                     rows.jsd_rows, rows.jsd_rows_backward_)


def linear_generalized_jsd(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    *,
    mask: torch.Tensor | None = None,
    normalize: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """generalized_jsd(student_hidden @ student_weight.T, teacher_hidden @ teacher_weight.T, ...) in chunks
    of tokens; gradients reach the student's hidden and weight, never the teacher's."""
    rows = _divergence_backend(student_hidden)
    return functions.linear_generalized_jsd(student_hidden, student_weight, teacher_hidden, teacher_weight, beta,
                                            temperature, mask, normalize, chunk_size, rows.jsd_rows,
                                            rows.jsd_rows_backward_)


def kl(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(policy || ref) from the sampled tokens' log-probabilities, fp32."""
    return _divergence_backend(logp).kl(logp, ref_logp, estimator)


__all__ = ["get_backend", "generalized_jsd", "kl", "linear_generalized_jsd", "linear_token_logprobs",
           "set_backend", "token_logprobs"]
