"""GRPO under FSDP2 with 2 gloo processes samples the same rollouts, gets the same rewards and (within
float-reduction noise) the same losses as 1 process; the policy and the reference are sharded by GRPO."""

import pytest

import atlas.model as am
from atlas.embedded import model_path, task
from atlas.reward import answer_match
from atlas.rl import GRPO, GRPOConfig
from atlas.train.metrics import read_metrics
from tests.multiproc import run_ranks

EXACT = ("step", "reward_mean", "reward_std", "completion_len_mean", "truncated_frac", "zero_variance_frac", "lr")
CLOSE = ("loss", "kl", "entropy", "grad_norm")


def _run(output_dir):
    path = model_path("student")
    config = GRPOConfig(output_dir=str(output_dir), max_steps=3, lr=1e-4, prompts_per_step=4, num_generations=4,
                        max_new_tokens=10, micro_batch_size=4, beta=0.04, seed=5)
    trainer = GRPO(am.from_pretrained(path), am.Tokenizer.from_pretrained(path), answer_match, config)
    return trainer, trainer.train(task.examples("train")[:32])


def _worker(rank, root):
    trainer, _ = _run(root / "two")
    # every block of the policy and of the reference holds only its shard (the roots may stay gathered
    # after a forward, as FSDP2 keeps them)
    return {"sharded": all(hasattr(p, "full_tensor") for m in (trainer.model, trainer.ref)
                           for p in m.layers.parameters())}


@pytest.mark.slow
def test_two_processes_sample_and_learn_as_one(tmp_path):
    _run(tmp_path / "one")
    assert all(r["sharded"] for r in run_ranks(_worker, tmp_path, tmp_path=tmp_path))
    one, two = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}  # the same rollouts and rewards
        for k in CLOSE:
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (k, a[k], b[k])
        assert a["logprob_gap_max"] <= 1e-5 and b["logprob_gap_max"] <= 1e-5
