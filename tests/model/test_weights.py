"""Checkpoints in and out: round trip through transformers, sharding, atomic writes, dtype, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import atlas.model as am
from tests.tiny import build_tokenizer, hf_model, save_hf

ROOT = Path(__file__).resolve().parents[2]


def _ids(B=2, T=24):
    return torch.randint(0, 320, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama3", "qwen2_yarn"])
@pytest.mark.parametrize("shard", [False, True])
def test_round_trip_atlas_save_transformers_load(tmp_path, family, shard):
    from transformers import AutoModelForCausalLM

    hf = hf_model(family)
    model = am.from_pretrained(save_hf(hf, tmp_path / "src"))
    out = am.save_pretrained(model, tmp_path / "out", max_shard_bytes=40_000 if shard else 5 * 2**30)
    assert (out / "model.safetensors.index.json").exists() == shard
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = _ids()
    with torch.no_grad():
        assert (reloaded(ids).logits - model(ids)).abs().max().item() <= 1e-5
        assert torch.equal(am.from_pretrained(out)(ids), model(ids))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [type(hf).__name__]
    if shard:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == {k for f in set(index["weight_map"].values())
                                            for k in load_file(out / f)}


def test_save_copies_tokenizer_and_replaces_atomically(tmp_path):
    model = am.from_pretrained(save_hf(hf_model("qwen2"), tmp_path / "src"))
    tok = am.Tokenizer.from_pretrained(build_tokenizer(tmp_path / "tok"))
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier save")
    am.save_pretrained(model, out, tokenizer=tok)
    assert not (out / "stale.txt").exists()
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    assert am.Tokenizer.from_pretrained(out).encode("hello world") == tok.encode("hello world")

    class Broken:
        def save_pretrained(self, directory):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        am.save_pretrained(model, out, tokenizer=Broken())
    # the previous checkpoint is intact and no temp directory is left behind
    assert (out / "tokenizer.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "src", "tok"]


def test_dtype_defaults_to_checkpoint_and_can_be_overridden(tmp_path):
    hf = hf_model("qwen3").to(torch.bfloat16)
    path = save_hf(hf, tmp_path)
    assert am.from_pretrained(path).dtype == torch.bfloat16
    model = am.from_pretrained(path, dtype=torch.float32)
    assert model.dtype == torch.float32 and model.inv_freq.dtype == torch.float32


def _ckpt(tmp_path, family="qwen3"):
    return save_hf(hf_model(family), tmp_path)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    path = _ckpt(tmp_path)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pickle.*pytorch_model\.bin.*safe_serialization"):
        am.from_pretrained(path)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    path = _ckpt(tmp_path)
    state = load_file(path / "model.safetensors")
    state.pop("model.layers.1.mlp.up_proj.weight")
    state["model.layers.1.mlp.extra.weight"] = torch.zeros(2)
    save_file(state, path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing: \['model\.layers\.1\.mlp\.up_proj\.weight'\]") as e:
        am.from_pretrained(path)
    assert "model.layers.1.mlp.extra.weight" in str(e.value)


def test_shape_mismatch_is_listed(tmp_path):
    path = _ckpt(tmp_path)
    state = load_file(path / "model.safetensors")
    state["model.norm.weight"] = torch.ones(65)
    save_file(state, path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.norm\.weight: checkpoint \(65,\) vs model \(64,\)"):
        am.from_pretrained(path)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"model_type": "mistral"}, "unsupported model_type 'mistral'"),
        ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}}, "unsupported rope type"),
        ({"rope_parameters": None, "rope_scaling": {"type": "longrope", "factor": 2.0}}, "unsupported rope type"),
        ({"use_sliding_window": True, "sliding_window": 64}, "sliding-window attention is unsupported"),
        ({"hidden_act": "gelu"}, "unsupported hidden_act"),
    ],
)
def test_unsupported_configs_raise(tmp_path, patch, message):
    path = _ckpt(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config.update(patch)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        am.from_pretrained(path)


def test_hub_id_resolves_through_the_offline_cache(tmp_path):
    """A hub id is found in the huggingface_hub cache with HF_HUB_OFFLINE=1; an uncached id is a ValueError."""
    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-qwen3" / "snapshots" / ("a" * 40)
    save_hf(hf_model("qwen3"), snapshot)
    build_tokenizer(snapshot)
    refs = tmp_path / "hub" / "models--tiny-org--tiny-qwen3" / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    script = (
        "import atlas.model as am, pytest\n"
        "m = am.from_pretrained('tiny-org/tiny-qwen3'); t = am.Tokenizer.from_pretrained('tiny-org/tiny-qwen3')\n"
        "print(m.config.model_type, t.eos_token)\n"
        "with pytest.raises(ValueError, match='HF_HUB_OFFLINE'):\n"
        "    am.from_pretrained('tiny-org/not-cached')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["qwen3", "<|im_end|>"]


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "llama"])
def test_model_built_from_a_config_round_trips(tmp_path, model_type):
    config = am.ModelConfig(model_type=model_type, vocab_size=64, hidden_size=32, intermediate_size=48,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            max_position_embeddings=128, tie_word_embeddings=model_type != "llama")
    model = am.Transformer(config)
    assert model.config.attention_bias == (model_type == "qwen2") and model.config.qk_norm == (model_type == "qwen3")
    out = am.save_pretrained(model, tmp_path / model_type)
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.equal(am.from_pretrained(out)(ids), model(ids))
