"""Logits parity with transformers (fp32, <= 1e-4) and the forward's batching modes."""

import json

import pytest
import torch

import atlas.model as am
from tests.tiny import FAMILIES, hf_model, save_hf

TOL = 1e-4


def _ids(B, T, seed=0, vocab=320):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("style", ["v5", "hub"])
@pytest.mark.parametrize("sharded", [False, True])
def test_logits_match_transformers(tmp_path, family, style, sharded):
    hf = hf_model(family)
    save_hf(hf, tmp_path, style=style, max_shard_size="60KB" if sharded else None)
    assert (tmp_path / "model.safetensors.index.json").exists() == sharded
    config = json.loads((tmp_path / "config.json").read_text())
    assert ("rope_parameters" in config) == (style == "v5")

    model = am.from_pretrained(tmp_path)
    # 96 tokens: past llama3's original_max_position_embeddings (32) and yarn's (64)
    ids = _ids(2, 96)
    with torch.no_grad():
        ref = hf(ids).logits
        out = model(ids)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= TOL
    assert model.config.tie_word_embeddings == hf.config.tie_word_embeddings
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.embed_tokens.weight


def test_config_fields_per_family():
    cfg = am.ModelConfig.from_hf(hf_model("qwen3").config.to_dict())
    assert cfg.qk_norm and not cfg.attention_bias and cfg.head_dim == 24 != 64 // 4
    cfg = am.ModelConfig.from_hf(hf_model("qwen2").config.to_dict())
    assert cfg.attention_bias and cfg.tie_word_embeddings and not cfg.qk_norm
    cfg = am.ModelConfig.from_hf(hf_model("llama3").config.to_dict())
    assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_theta == 500000.0


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    hf = hf_model("qwen3")
    path = save_hf(hf, tmp_path_factory.mktemp("qwen3"))
    return hf, am.from_pretrained(path)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_rows_alone(qwen3, side):
    hf, model = qwen3
    lengths = [9, 23, 16]
    rows = [_ids(1, n, seed=i)[0] for i, n in enumerate(lengths)]
    T = max(lengths)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        ids[i, sl], mask[i, sl] = r, 1
    with torch.no_grad():
        batched = model(ids, attention_mask_BT=mask)
        hf_batched = hf(ids, attention_mask=mask).logits
        for i, r in enumerate(rows):
            alone = model(r[None])[0]
            sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
            assert (batched[i, sl] - alone).abs().max().item() <= TOL
            assert (hf_batched[i, sl] - alone).abs().max().item() <= TOL
    assert torch.isfinite(batched).all()


def test_packed_sequences_equal_separate(qwen3):
    _, model = qwen3
    lengths = [5, 12, 7]
    rows = [_ids(1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    packed = torch.cat(rows)[None]
    cu = torch.tensor([0, 5, 17, 24], dtype=torch.int32)
    with torch.no_grad():
        out = model(packed, cu_seqlens=cu)[0]
        for r, start in zip(rows, cu[:-1].tolist()):
            alone = model(r[None])[0]
            assert (out[start:start + len(r)] - alone).abs().max().item() <= TOL


def test_kv_cache_prefill_then_decode_equals_full_forward(qwen3):
    _, model = qwen3
    ids = _ids(2, 20, seed=3)
    cache = am.KVCache(model.config, 2, 32, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        full = model(ids)
        steps = [model(ids[:, :12], cache=cache)]
        steps.append(model(ids[:, 12:15], cache=cache))  # a chunk after the prefill: causal offset mask
        for t in range(15, 20):
            steps.append(model(ids[:, t:t + 1], cache=cache))
    assert cache.pos == 20
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= TOL


def test_kv_cache_left_padded_decode(qwen3):
    _, model = qwen3
    a, b = _ids(1, 6, seed=4)[0], _ids(1, 11, seed=5)[0]
    ids = torch.zeros(2, 11, dtype=torch.long)
    mask = torch.zeros(2, 11, dtype=torch.long)
    ids[0, 5:], mask[0, 5:] = a, 1
    ids[1], mask[1] = b, 1
    nxt = _ids(2, 3, seed=6)
    cache = am.KVCache(model.config, 2, 16, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        model(ids, attention_mask_BT=mask, cache=cache)
        decoded = torch.cat([model(nxt[:, t:t + 1], cache=cache) for t in range(3)], dim=1)
        for i, row in enumerate([a, b]):
            full = model(torch.cat([row, nxt[i]])[None])[0, -3:]
            assert (decoded[i] - full).abs().max().item() <= TOL


def test_return_hidden_and_lm_head_give_logits(qwen3):
    _, model = qwen3
    ids = _ids(2, 8)
    with torch.no_grad():
        hidden = model(ids, return_hidden=True)
        assert hidden.shape == (2, 8, model.config.hidden_size)
        assert torch.allclose(model.lm_head(hidden), model(ids), atol=1e-6)


def test_bad_forward_inputs(qwen3):
    _, model = qwen3
    with pytest.raises(ValueError, match="batch, time"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(_ids(1, 6), cu_seqlens=torch.tensor([0, 4, 5]))
    cache = am.KVCache(model.config, 1, 4, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="cache overflow"):
        model(_ids(1, 6), cache=cache)
    cache = am.KVCache(model.config, 2, 8, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="attention_mask_BT must have shape"):
        model(_ids(2, 3), attention_mask_BT=torch.ones(1, 3), cache=cache)


def test_static_decode_equals_full_forward(qwen3):
    """Fixed-shape decoding (tensor slot, attention over all slots) gives the same logits."""
    _, model = qwen3
    a, b = _ids(1, 6, seed=7)[0], _ids(1, 10, seed=8)[0]
    ids = torch.zeros(2, 10, dtype=torch.long)
    mask = torch.zeros(2, 10, dtype=torch.long)
    ids[0, 4:], mask[0, 4:] = a, 1
    ids[1], mask[1] = b, 1
    nxt = _ids(2, 4, seed=9)
    cache = am.KVCache(model.config, 2, 24, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        model(ids, attention_mask_BT=mask, cache=cache)
        cache.start_static_decode()
        steps = []
        for t in range(4):
            positions = torch.tensor([[6 + t], [10 + t]])
            steps.append(model(nxt[:, t:t + 1], positions_BT=positions, cache=cache))
        assert cache.slot_t.item() == 14
        decoded = torch.cat(steps, dim=1)
        for i, row in enumerate([a, b]):
            full = model(torch.cat([row, nxt[i]])[None])[0, -4:]
            assert (decoded[i] - full).abs().max().item() <= TOL
        # the cache knows how far each row has advanced: without explicit positions, the same logits
        cache.reset()
        model(ids, attention_mask_BT=mask, cache=cache)
        cache.start_static_decode()
        derived = torch.cat([model(nxt[:, t:t + 1], cache=cache) for t in range(4)], dim=1)
        assert torch.equal(derived, decoded) and cache.lengths_B.tolist() == [10, 14]


def test_rows_append_blocks_of_different_lengths_and_continue(qwen3):
    """An agent's turn: each row appends its own number of tokens (right-padded block), then decoding goes
    on from the same cache; every row's logits equal one full forward over its own tokens."""
    _, model = qwen3
    prompts = [_ids(1, 5, seed=10)[0], _ids(1, 8, seed=11)[0]]
    appended = [_ids(1, 4, seed=12)[0], _ids(1, 1, seed=13)[0]]
    nxt = _ids(2, 2, seed=14)
    ids, mask = torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, 8 - len(p):], mask[i, 8 - len(p):] = p, 1
    block, block_mask = torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)
    for i, x in enumerate(appended):
        block[i, :len(x)], block_mask[i, :len(x)] = x, 1
    cache = am.KVCache(model.config, 2, 32, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        model(ids, attention_mask_BT=mask, cache=cache)
        out = model(block, attention_mask_BT=block_mask, cache=cache)
        steps = torch.cat([model(nxt[:, t:t + 1], cache=cache) for t in range(2)], dim=1)
        assert cache.lengths_B.tolist() == [5 + 4 + 2, 8 + 1 + 2] and cache.has_pad
        for i in range(2):
            full = model(torch.cat([prompts[i], appended[i], nxt[i]])[None])[0]
            n = len(appended[i])
            assert (out[i, :n] - full[len(prompts[i]):len(prompts[i]) + n]).abs().max().item() <= TOL
            assert (steps[i] - full[-2:]).abs().max().item() <= TOL
