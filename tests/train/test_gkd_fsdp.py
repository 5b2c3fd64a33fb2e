"""GKD under FSDP2 with 2 gloo processes (student and teacher both sharded, the teacher's head unsharded for
each step): the same samples and, within float-reduction noise, the same losses as 1 process."""

import pytest

import atlas.model as am
from atlas.distill import GKD, GKDConfig
from atlas.embedded import model_path, task
from atlas.reward import answer_match
from atlas.train.metrics import read_metrics
from tests.multiproc import run_ranks


def _run(output_dir):
    tok = am.Tokenizer.from_pretrained(model_path("student"))
    config = GKDConfig(output_dir=str(output_dir), max_steps=3, lr=1e-3, batch_size=4, micro_batch_size=2,
                       max_new_tokens=10, lmbda=0.5, seed=4)
    trainer = GKD(am.from_pretrained(model_path("student")), am.from_pretrained(model_path("teacher")), tok, config,
                  reward_fn=answer_match)
    return trainer, trainer.train(task.examples("train")[:24])


def _worker(rank, root):
    trainer, _ = _run(root / "two")
    return {"sharded": all(hasattr(p, "full_tensor") for m in (trainer.model, trainer.teacher)
                           for p in m.layers.parameters())}


@pytest.mark.slow
def test_two_processes_distil_as_one(tmp_path):
    _run(tmp_path / "one")
    assert all(r["sharded"] for r in run_ranks(_worker, tmp_path, tmp_path=tmp_path))
    one, two = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert [r["on_policy"] for r in one] == [r["on_policy"] for r in two] and {r["on_policy"] for r in one} == {0, 1}
    for a, b in zip(one, two):
        assert a["completion_len_mean"] == b["completion_len_mean"]
        assert a["tokens"] == b["tokens"]  # the step's global count, not rank 0's share
        assert abs(a["loss"] - b["loss"]) <= 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4
