"""GKD under FSDP2 with 2 gloo processes (student and teacher both sharded, the teacher's head unsharded for
each step): the same samples and, within float-reduction noise, the same losses as 1 process."""

import json
import os
import socket

import pytest
import torch.multiprocessing as mp

import atlas.model as am
from atlas.distill import GKD, GKDConfig
from atlas.embedded import model_path, task
from atlas.train.metrics import read_metrics


def _run(output_dir):
    tok = am.Tokenizer.from_pretrained(model_path("student"))
    config = GKDConfig(output_dir=str(output_dir), max_steps=3, lr=1e-3, batch_size=4, micro_batch_size=2,
                       max_new_tokens=10, lmbda=0.5, seed=4)
    trainer = GKD(am.from_pretrained(model_path("student")), am.from_pretrained(model_path("teacher")), tok, config,
                  reward_fn=task.reward)
    return trainer, trainer.train(task.examples("train")[:24])


def _worker(rank, world, port, root):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch

    import atlas.distributed as ad

    torch.set_num_threads(1)
    try:
        trainer, _ = _run(root / "two")
        models = (trainer.model, trainer.teacher)
        sharded = all(hasattr(p, "full_tensor") for m in models for p in m.layers.parameters())
        (root / f"done.{rank}.json").write_text(json.dumps({"sharded": sharded}))
    finally:
        ad.shutdown()


@pytest.mark.slow
def test_two_processes_distil_as_one(tmp_path):
    _run(tmp_path / "one")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(_worker, args=(2, port, tmp_path), nprocs=2, join=False, start_method="spawn")
    for process in context.processes:
        process.join(timeout=300)
        if process.is_alive():
            process.kill()
    codes = [p.exitcode for p in context.processes]
    assert all((tmp_path / f"done.{r}.json").exists() for r in range(2)), f"a rank failed; exit codes {codes}"
    assert all(json.loads((tmp_path / f"done.{r}.json").read_text())["sharded"] for r in range(2))
    one, two = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert [r["on_policy"] for r in one] == [r["on_policy"] for r in two] and {r["on_policy"] for r in one} == {0, 1}
    for a, b in zip(one, two):
        assert a["completion_len_mean"] == b["completion_len_mean"]
        assert abs(a["loss"] - b["loss"]) <= 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4
