"""The model as trainers use it: the LM-head log-prob path, activation checkpointing, meta-device init,
rope frequencies under dtype casts, and crash-safe, streamed checkpoint writes."""

import os

import pytest
import torch

import atlas.model as am
import atlas.model.weights as weights
from atlas.model.rope import rope_inv_freq
from atlas.model.transformer import Block
from tests.tiny import hf_model, save_hf


def _ids(B, T, seed=0):
    return torch.randint(0, 320, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])  # tied and untied heads
def model(request, tmp_path_factory):
    return am.from_pretrained(save_hf(hf_model(request.param, seed=4), tmp_path_factory.mktemp(request.param)))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equal_a_float64_log_softmax(model, temperature):
    ids = _ids(2, 12)
    targets = _ids(2, 12, seed=1)
    targets[0, :3] = -100  # prompt tokens: ignored
    hidden = model(ids, return_hidden=True).detach().requires_grad_()
    logp, ent = model.token_logprobs(hidden, targets, temperature, return_entropy=True)

    h64 = hidden.detach().double().requires_grad_()
    w64 = model.lm_head.weight.detach().double().requires_grad_()
    logq = ((h64 @ w64.T) / temperature).log_softmax(-1)
    keep = targets != -100
    ref = torch.where(keep, logq.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1), 0.0)
    ref_ent = torch.where(keep, -(logq.exp() * logq).sum(-1), 0.0)
    assert (logp.double() - ref).abs().max() <= 1e-5 and (ent.double() - ref_ent).abs().max() <= 1e-5
    assert (logp[0, :3] == 0).all()

    g = torch.randn(2, 12, dtype=torch.float64)
    (logp.double() * g).sum().backward()
    (ref * g).sum().backward()
    assert (hidden.grad.double() - h64.grad).abs().max() <= 1e-5
    assert (model.lm_head.weight.grad.double() - w64.grad).abs().max() <= 1e-5
    model.zero_grad(set_to_none=True)


def test_activation_checkpointing_keeps_loss_gradients_and_names(model, monkeypatch):
    ids, targets = _ids(2, 10, seed=2), _ids(2, 10, seed=3)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = -model.token_logprobs(model(ids, return_hidden=True), targets).mean()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_loss, plain_grads = loss_and_grads()
    calls = []
    real = Block._forward
    monkeypatch.setattr(Block, "_forward", lambda self, *a: calls.append(1) or real(self, *a))
    model.activation_checkpointing = True
    try:
        ckpt_loss, ckpt_grads = loss_and_grads()
        names = list(model.state_dict())
    finally:
        model.activation_checkpointing = False
    # every block ran twice: forward, then recomputed in backward
    assert len(calls) == 2 * model.config.num_hidden_layers
    assert ckpt_loss == plain_loss
    assert all(torch.allclose(ckpt_grads[n], plain_grads[n], atol=1e-6) for n in plain_grads)
    assert names == list(model.state_dict()) and not any("checkpoint" in n for n in names)
    with torch.no_grad():  # no recompute without grad
        calls.clear()
        model.activation_checkpointing = True
        model(ids)
        model.activation_checkpointing = False
    assert len(calls) == model.config.num_hidden_layers


def test_init_weights_after_to_empty_reties_and_initialises(model):
    with torch.device("meta"):
        fresh = am.Transformer(model.config)
    fresh.to_empty(device="cpu")
    if model.config.tie_word_embeddings:
        assert fresh.lm_head.weight is fresh.embed_tokens.weight  # re-tied as part of to_empty
    fresh.init_weights()
    assert (fresh.lm_head.weight is fresh.embed_tokens.weight) == model.config.tie_word_embeddings
    std = fresh.layers[0].mlp.up_proj.weight.std().item()
    assert abs(std - model.config.initializer_range) < 0.1 * model.config.initializer_range
    assert (fresh.norm.weight == 1).all()
    assert fresh.inv_freq.device.type == "cpu" and torch.equal(fresh.inv_freq, model.inv_freq)


def test_rope_frequencies_stay_fp32_under_dtype_casts(model):
    cast = am.Transformer(model.config)
    cast.load_state_dict(model.state_dict())
    cast.to(torch.bfloat16)
    exact, _ = rope_inv_freq(model.config)
    assert cast.inv_freq.dtype == torch.float32 and torch.equal(cast.inv_freq, exact)
    # what bf16 frequencies would cost at position 8000: the angle error the fp32 buffer avoids
    assert (8000 * (exact.bfloat16().float() - exact)).abs().max() > 0.1
    cast.half().float()
    assert torch.equal(cast.inv_freq, exact)


def test_save_is_atomic_streamed_and_durable(tmp_path, monkeypatch):
    src = am.from_pretrained(save_hf(hf_model("qwen3", seed=5), tmp_path / "src"))
    out = tmp_path / "ckpt"
    am.save_pretrained(src, out)
    old_logits = am.from_pretrained(out)(_ids(1, 6))
    newer = am.from_pretrained(save_hf(hf_model("qwen3", seed=6), tmp_path / "src2"))

    # streamed: each file receives at most one shard's bytes; durable: files and directories fsynced
    shard_bytes, fsyncs = [], []
    real_save, real_fsync = weights.save_file, os.fsync
    monkeypatch.setattr(weights, "save_file", lambda t, *a, **k: shard_bytes.append(
        sum(x.numel() * x.element_size() for x in t.values())) or real_save(t, *a, **k))
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    exchanged = []
    real_exchange = weights._exchange
    monkeypatch.setattr(weights, "_exchange", lambda a, b: exchanged.append(1) or real_exchange(a, b))
    limit = 60_000
    am.save_pretrained(newer, out, max_shard_bytes=limit)
    biggest = max(p.numel() * p.element_size() for p in newer.parameters())
    assert len(shard_bytes) > 2 and max(shard_bytes) <= max(limit, biggest)
    assert len(fsyncs) >= len(shard_bytes) + 2 and exchanged == [1]  # the atomic exchange was taken
    new_logits = am.from_pretrained(out)(_ids(1, 6))
    assert not torch.equal(new_logits, old_logits)

    # a failure in the middle of writing the shards leaves the complete previous checkpoint in place
    def fail_on_third(tensors, path, **kwargs):
        if len(shard_bytes) == 2:
            raise OSError("disk full")
        shard_bytes.append(0)
        real_save(tensors, path, **kwargs)

    shard_bytes.clear()
    monkeypatch.setattr(weights, "save_file", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        am.save_pretrained(src, out, max_shard_bytes=limit)
    assert torch.equal(am.from_pretrained(out)(_ids(1, 6)), new_logits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "src", "src2"]  # no temp directory left

    # where the exchange is unavailable: rename aside, rename in, still a complete checkpoint after
    monkeypatch.setattr(weights, "save_file", real_save)
    monkeypatch.setattr(weights, "_exchange", lambda a, b: False)
    am.save_pretrained(src, out, dtype=torch.bfloat16)
    reloaded = am.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "src", "src2"]
