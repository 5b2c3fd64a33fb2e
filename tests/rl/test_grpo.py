"""GRPO on the embedded student (the committed checkpoint): the ratio and the sampler/trainer gap, micro-
batching, exact resume through a SIGTERM mid mu-cycle, exact truncated-sampling weights, what reward
functions receive and how their failures stop the run, config checks, and a short run that learns."""

import math

import pytest
import torch

import atlas.model as am
import atlas.rl.grpo as grpo_module
from atlas.embedded import model_path, task
from atlas.reward import answer_match
from atlas.rl import GRPO, GRPOConfig
from atlas.train.metrics import read_metrics
from tests.signals import sigterm_after

EXAMPLES = task.examples("train")[:64]
KEYS = ("step", "loss", "kl", "reward_mean", "grad_norm", "lr", "completion_len_mean", "clip_frac")


def _grpo(tmp_path, reward=answer_match, **overrides):
    config = GRPOConfig(**{"output_dir": str(tmp_path / "run"), "max_steps": 2, "lr": 1e-4, "prompts_per_step": 4,
                           "num_generations": 4, "max_new_tokens": 10, "micro_batch_size": 16, "seed": 3,
                           **overrides})
    path = model_path("student")
    return GRPO(am.from_pretrained(path), am.Tokenizer.from_pretrained(path), reward, config)


def test_first_inner_step_has_ratio_one_and_no_sampler_trainer_gap(tmp_path):
    trainer = _grpo(tmp_path, max_steps=2)
    trainer.train(EXAMPLES)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 2
    for row in rows:
        assert row["clip_frac"] == 0.0  # old = current, detached: rho == 1 exactly
        assert row["logprob_gap_max"] <= 1e-5  # one model, one kernel (fp32)
        assert 0 < row["reward_mean"] < 1 and row["kl"] >= 0 and row["completion_len_mean"] > 0


def test_micro_batches_do_not_change_the_gradient(tmp_path, monkeypatch):
    grads = {}

    def capture(name):
        def step(self):
            grads[name] = torch.cat([p.grad.flatten() for p in self.param_groups[0]["params"]]).clone()
        return step

    for name, size in (("one", 16), ("several", 5)):  # 16 sequences in one micro-batch, or 5 + 5 + 5 + 1
        trainer = _grpo(tmp_path / name, micro_batch_size=size)
        monkeypatch.setattr(trainer.optimizer, "step", capture(name).__get__(trainer.optimizer))
        trainer.step(EXAMPLES[:4])
    assert torch.allclose(grads["one"], grads["several"], atol=1e-6)
    assert grads["one"].abs().max() > 0


@pytest.mark.parametrize("mu, ref_sync_every", [(2, 0), (1, 1), (2, 1)])
def test_resume_after_sigterm_mid_cycle_continues_the_exact_run(tmp_path, mu, ref_sync_every):
    """Cut at step 3 (with mu = 2 the first inner step of the second rollout batch: its rollouts are kept),
    resume, and the rows are the uninterrupted run's; with a syncing reference, its moved weights too."""
    settings = dict(max_steps=6, mu=mu, save_every=100, beta=0.04, ref_sync_every=ref_sync_every)
    straight = _grpo(tmp_path / "straight", **settings)
    straight.train(EXAMPLES)
    expected = read_metrics(tmp_path / "straight" / "run" / "metrics.jsonl")

    cut = _grpo(tmp_path / "cut", **settings)
    sigterm_after(cut, 3)
    out = cut.train(EXAMPLES)
    assert out["interrupted"] and out["step"] == 3
    assert (cut.rollout_batch is not None and cut.rollout_batch.inner == 1) if mu == 2 else cut.rollout_batch is None
    resumed = _grpo(tmp_path / "cut", resume=True, **settings)
    resumed.train(EXAMPLES)
    got = read_metrics(tmp_path / "cut" / "run" / "metrics.jsonl")
    assert [{k: r[k] for k in KEYS} for r in got] == [{k: r[k] for k in KEYS} for r in expected]
    assert [r["rollout_s"] > 0 for r in got] == [True, False] * 3 if mu == 2 else [True] * 6
    assert all(r["kl"] > 0 for r in got[1:])  # the reference term was there to get wrong


def test_truncated_importance_weights_are_the_kept_mass(tmp_path, monkeypatch):
    """With top-k sampling, q(y) = p(y) / Z_kept on the kept set, so min(pi_old / q, C) = min(Z_kept, C):
    checked against a float64 forward over the full vocabulary."""
    seen = {}
    real_loss = grpo_module.policy_loss

    def spy(*args, weights_M=None, **kwargs):
        seen.setdefault("weights", []).append(weights_M.detach().clone())
        return real_loss(*args, weights_M=weights_M, **kwargs)

    real_rollouts = grpo_module.sample_rollouts
    monkeypatch.setattr(grpo_module, "policy_loss", spy)
    monkeypatch.setattr(grpo_module, "sample_rollouts", lambda *a: seen.setdefault("batch", real_rollouts(*a)))
    top_k, T = 4, 1.3
    trainer = _grpo(tmp_path, temperature=T, top_k=top_k, tis_cap=1e9, beta=0.0, micro_batch_size=16, lr=1e-9)
    trainer.step(EXAMPLES[:4])
    (weights,), rollouts = seen["weights"], seen["batch"].rollouts
    model = trainer.model
    checked = []  # one micro-batch: the targets are the completions' tokens, rollout after rollout
    for r in rollouts:
        with torch.no_grad():
            z = model(torch.tensor([r.sequence]))[0].double() / T
        for j, token in enumerate(r.completion_ids):
            p = z[len(r.prompt_ids) - 1 + j].softmax(-1)
            kept = p.topk(top_k).values.sum().item()
            assert p.topk(top_k).indices.tolist().count(token) == 1
            assert weights[len(checked)].item() == pytest.approx(kept, rel=1e-4)
            checked.append(kept)
    assert len(checked) == len(weights)
    assert len(checked) > 20 and min(checked) < 0.9  # weights well below 1 were applied: the branch ran


def test_reward_functions_get_prompts_and_columns_per_completion(tmp_path):
    calls = []

    def spy(prompts, completions, **columns):
        calls.append((prompts, completions, columns))
        return [0.0] * len(completions)

    rows = [{"prompt": f"What is {a} + 1?", "answer": str(a + 1), "level": a % 3} for a in range(10, 14)]
    _grpo(tmp_path, reward=spy).step(rows)
    prompts, completions, columns = calls[0]
    assert len(prompts) == len(completions) == 16 and prompts[:4] == [rows[0]["prompt"]] * 4
    assert columns == {"answer": [r["answer"] for r in rows for _ in range(4)],
                       "level": [r["level"] for r in rows for _ in range(4)]}
    calls.clear()
    trainer = _grpo(tmp_path, reward=spy)
    trainer.step(EXAMPLES[:4])  # an atlas.data.Example's reference arrives as answers
    assert calls[0][2] == {"answers": [e.reference for e in EXAMPLES[:4] for _ in range(4)]}
    # the held-out evaluation calls the reward the same way: a prompt-sensitive judge scores alike in both
    for examples in (rows, EXAMPLES[:4]):
        calls.clear()
        trainer.step(examples)
        trainer.evaluate(examples)
        (train_prompts, _, train_columns), (eval_prompts, _, eval_columns) = calls
        assert eval_prompts == train_prompts[::4] and eval_columns == {k: v[::4] for k, v in train_columns.items()}


@pytest.mark.parametrize("bad, message", [
    (lambda p, c, **k: [1.0] * (len(c) - 1), "returned 15 values for 16"),
    (lambda p, c, **k: [math.nan] * len(c), "non-finite"),
    (lambda p, c, **k: 1 / 0, "raised ZeroDivisionError"),
])
def test_a_failing_reward_function_stops_the_run_naming_it(tmp_path, bad, message):
    def judge(prompts, completions, **columns):
        return bad(prompts, completions, **columns)

    with pytest.raises((ValueError, RuntimeError), match=f"reward function 'judge' .*{message}"):
        _grpo(tmp_path, reward=[answer_match, judge], reward_weights=[1.0, 0.5]).step(EXAMPLES[:4])


@pytest.mark.parametrize("overrides, message", [
    (dict(num_generations=1), "num_generations"), (dict(temperature=0.0), "temperature"),
    (dict(eps_low=1.0), "eps_low"), (dict(mu=0), "'mu'"), (dict(tis_cap=0.0), "tis_cap"),
    (dict(top_p=1.5), "top_p"), (dict(loss_norm="sum"), "loss_norm"), (dict(lr=0.0), "'lr'"),
])
def test_bad_config_values_raise_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        GRPOConfig(**overrides)


def test_a_short_run_on_the_embedded_default_learns(tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = _grpo(tmp_path, max_steps=160, prompts_per_step=8, num_generations=8, micro_batch_size=64,
                    eval_every=160, max_new_tokens=12)
    trainer.train(task.examples("train"), task.examples("eval")[:200])
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    evals = [r for r in rows if "eval_success_rate" in r]
    assert evals[-1]["eval_success_rate"] >= evals[0]["eval_success_rate"] + 0.15
    steps = [r for r in rows if "reward_mean" in r]
    first, last = (sum(r["reward_mean"] for r in steps[s]) / 16 for s in (slice(0, 16), slice(-16, None)))
    assert last > first
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert (hf(ids).logits - trainer.model(ids)).abs().max() <= 1e-5
