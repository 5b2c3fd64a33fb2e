"""Rotary position embeddings: the inverse frequencies of each rope type, and their application.

    rope(x)_t = x * cos(t * f) + rotate_half(x) * sin(t * f),   f = the inverse frequencies below

Computed in fp32 (the Transformer keeps them fp32 whatever dtype it is cast to). Left out: dynamic NTK,
longrope and partial rotary (ModelConfig rejects them).
"""

from __future__ import annotations

import math

import torch

from atlas.model.config import ModelConfig


def rope_inv_freq(config: ModelConfig, device: torch.device | str | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies f [D/2] and the cos/sin scale for the config's rope type.

    default: f_i = theta^(-2i/D).  linear: f / factor.
    llama3:  wavelengths 2pi/f longer than L_orig/low_freq_factor are divided by factor, shorter than
             L_orig/high_freq_factor kept, and in between blended with s = (L_orig/wavelen - low)/(high - low).
    yarn:    f = f_interp (1 - m) + f_extrap m with f_interp = f / factor and m a linear ramp over the
             dimensions between the beta_fast/beta_slow correction range; cos/sin scaled by 0.1 ln(factor) + 1
             (or the mscale ratio, or an explicit attention_factor).
    """
    dim = config.head_dim
    base = config.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    scaling = config.rope_scaling or {"rope_type": "default"}
    kind = scaling["rope_type"]
    if kind == "default":
        return inv_freq, 1.0
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor, 1.0
    original = scaling["original_max_position_embeddings"]
    if kind == "llama3":
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < original / high) & ~(wavelen > original / low)
        return torch.where(medium, blended, scaled), 1.0
    # yarn
    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=device) - lo) / (hi - lo)).clamp(0, 1)
    extrapolate = 1 - ramp
    inv_freq = (inv_freq / factor) * (1 - extrapolate) + inv_freq * extrapolate
    return inv_freq, float(attention_factor)


def apply_rope(x_BHTD: torch.Tensor, cos_BTD: torch.Tensor, sin_BTD: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BHTD.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x_BHTD * cos_BTD[:, None] + rotated * sin_BTD[:, None]
