"""The same random weights as a transformers Qwen2ForCausalLM and an atlas Transformer, for the
model-forward and sampler benchmarks (transformers is a benchmark-only reference)."""

from __future__ import annotations

import tempfile

import torch

import atlas.model as am

PRESETS = {
    # the CPU benches' shape: a Qwen2-style config at hidden 512 (layers and vocab set per bench)
    "small": dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096,
                  tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         tie_word_embeddings=True, rope_theta=1000000.0),
}


def qwen2_pair(preset: str, dtype: torch.dtype, device: str, **overrides):
    """(transformers model, atlas model) with identical random weights, both on `device` in `dtype`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(**{**PRESETS[preset], **overrides})).to(dtype).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = am.from_pretrained(d, device=device)
    return hf.to(device), ours
