"""SFT and the shared loop: the loss by hand, packing and micro-batching change nothing, resume (after a
real SIGTERM) continues the exact run, the HF export loads in transformers, a short run learns."""

import json
import math

import pytest
import torch

import atlas.model as am
from atlas.distill import SFT, SFTConfig
from atlas.train.data import encode_conversation
from atlas.train.metrics import read_metrics
from tests.signals import sigterm_after
from tests.tiny import build_tokenizer, hf_model, save_hf

EXAMPLES = [{"prompt": f"What is {a} times 7?", "completion": f"The answer is {a * 7}."} for a in range(24)]
MULTI = {"messages": [{"role": "user", "content": "What is 2 times 7?"},
                      {"role": "assistant", "content": "The answer is 14."},
                      {"role": "user", "content": "And 3?"}, {"role": "assistant", "content": "21"}]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    return build_tokenizer(root / "tok"), save_hf(hf_model("qwen2", seed=7), root / "model")


def _trainer(files, tmp_path, **overrides):
    tok_dir, model_dir = files
    config = SFTConfig(**{"output_dir": str(tmp_path / "run"), "max_steps": 4, "lr": 1e-3, "batch_size": 8,
                          "micro_batch_size": 8, **overrides})
    return SFT(am.from_pretrained(model_dir), am.Tokenizer.from_pretrained(tok_dir), config)


def _grads(trainer, batch):
    """Gradients of one step's loss (before the optimizer moves anything)."""
    total = sum(e.targets for e in batch)
    loss = trainer._nll(batch, total, train=True) / total
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    trainer.optimizer.zero_grad(set_to_none=True)
    return loss, grads


def test_loss_is_the_mean_nll_of_the_assistant_tokens(files, tmp_path):
    trainer = _trainer(files, tmp_path)
    data = trainer.prepare([EXAMPLES[3], MULTI])
    expected, count = 0.0, 0
    for example in data:
        (ids, mask), = encode_conversation(trainer.tokenizer, _conversation(example.example))
        with torch.no_grad():
            logp = trainer.model(torch.tensor([ids]))[0].double().log_softmax(-1)
        for t in range(1, len(ids)):
            if mask[t]:  # the assistant's tokens, predicted from everything before them
                expected -= logp[t - 1, ids[t]].item()
                count += 1
    # the tokens trained: every assistant turn and its end-of-turn token, nothing else
    masked = [trainer.tokenizer.decode([i for i, m in zip(e.ids, e.mask) if m]) for e in data]
    assert masked == ["The answer is 21.<|im_end|>", "The answer is 14.<|im_end|>21<|im_end|>"]
    row = trainer.step(data)
    assert row["target_tokens"] == count
    assert row["loss"] == pytest.approx(expected / count, abs=1e-5)


def _conversation(example):
    from atlas.train.data import as_conversation

    return as_conversation(example)


@pytest.mark.parametrize("variant", [dict(pack=False), dict(micro_batch_size=3), dict(micro_batch_size=3, pack=False)])
def test_packing_and_micro_batches_give_the_same_loss_and_gradients(files, tmp_path, variant):
    batch = EXAMPLES[:7] + [MULTI]
    base = _trainer(files, tmp_path / "a")
    other = _trainer(files, tmp_path / "b", **variant)
    loss_a, grads_a = _grads(base, base.prepare(batch))
    loss_b, grads_b = _grads(other, other.prepare(batch))
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert max((grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a) <= 1e-6


def test_resume_after_sigterm_continues_the_exact_run(files, tmp_path):
    straight = _trainer(files, tmp_path / "straight", max_steps=6, save_every=2, eval_every=3)
    straight.train(EXAMPLES[:16], EXAMPLES[16:])
    expected = read_metrics(tmp_path / "straight" / "run" / "metrics.jsonl")

    interrupted = _trainer(files, tmp_path / "cut", max_steps=6, save_every=2, eval_every=3)
    sigterm_after(interrupted, 3)
    out = interrupted.train(EXAMPLES[:16], EXAMPLES[16:])
    assert out["interrupted"] and out["step"] == 3
    run = tmp_path / "cut" / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    resumed = _trainer(files, tmp_path / "cut", max_steps=6, save_every=2, eval_every=3, resume=True)
    resumed.train(EXAMPLES[:16], EXAMPLES[16:])
    got = read_metrics(run / "metrics.jsonl")
    keys = ("step", "loss", "grad_norm", "lr", "target_tokens", "eval_loss")
    assert [{k: r.get(k) for k in keys} for r in got] == [{k: r.get(k) for k in keys} for r in expected]
    assert [r["step"] for r in got if "eval_loss" in r] == [0, 3, 6]


def test_hf_export_loads_in_transformers_with_the_same_logits(files, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = _trainer(files, tmp_path, max_steps=2)
    out = trainer.train(EXAMPLES[:8])
    hf_dir = tmp_path / "run" / "hf"
    assert out["hf"] == str(hf_dir)
    ids = torch.tensor([trainer.prepare([EXAMPLES[1]])[0].ids])
    with torch.no_grad():
        ours = trainer.model.eval()(ids)
        theirs = AutoModelForCausalLM.from_pretrained(hf_dir).eval()(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-5
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    assert trainer.tokenizer.eos_token_id in generation["eos_token_id"]
    assert AutoTokenizer.from_pretrained(hf_dir).chat_template == trainer.tokenizer.chat_template
    assert (tmp_path / "run" / "config.yaml").exists()


def test_a_short_run_lowers_the_held_out_loss(files, tmp_path):
    trainer = _trainer(files, tmp_path, max_steps=12, eval_every=12, lr=3e-3)
    trainer.train(EXAMPLES[:20], EXAMPLES[20:])
    evals = [r["eval_loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval_loss" in r]
    assert len(evals) == 2 and evals[1] < 0.7 * evals[0]


def test_too_long_conversations_are_cut_at_a_whole_turn_or_dropped_and_counted(files, tmp_path):
    trainer = _trainer(files, tmp_path, max_seq_len=40)
    kept = trainer.prepare(EXAMPLES[:3] + [MULTI])
    (ids, mask), = encode_conversation(trainer.tokenizer, MULTI["messages"])
    assert len(ids) > 40 and len(kept) == 4 and trainer.prepared["cut_at_turn"] == 1
    cut = kept[3]  # the second turn does not fit: the conversation ends after the first, whole
    assert cut.ids == ids[:len(cut.ids)] and cut.mask == mask[:len(cut.ids)] and cut.mask[-1] == 1
    assert trainer.tokenizer.decode([i for i, m in zip(cut.ids, cut.mask) if m]) == "The answer is 14.<|im_end|>"
    with pytest.raises(ValueError, match="no example is left.*'too_long': 3"):  # no turn fits: dropped, counted
        _trainer(files, tmp_path, max_seq_len=5).prepare(EXAMPLES[:3])


def test_non_finite_steps_are_skipped_counted_and_then_stop_the_run(files, tmp_path):
    trainer = _trainer(files, tmp_path, max_nonfinite_steps=2)
    data = trainer.prepare(EXAMPLES[:8])
    with torch.no_grad():
        trainer.model.norm.weight[0] = float("nan")  # every forward, and so every gradient, is NaN now
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    row = trainer.step(data)
    assert row["skipped"] == 1 and row["skipped_total"] == 1 and math.isnan(row["grad_norm"])
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) or torch.isnan(before[n]).any() for n in before)  # did not move
    with pytest.raises(RuntimeError, match="2 consecutive optimizer steps"):
        trainer.step(data)


def test_asking_for_wandb_without_it_installed_says_so(files, tmp_path):
    try:
        import wandb  # noqa: F401

        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="wandb is not installed"):
        _trainer(files, tmp_path, wandb_project="atlas-test").train(EXAMPLES[:8])
