"""SFT under FSDP2 with 2 gloo processes: the same losses as 1 process; a stop signalled to one rank only
is agreed by both, saved as a sharded DCP state, and resumed to the same rows."""

import pytest

import atlas.model as am
from atlas.distill import SFT, SFTConfig
from atlas.train.metrics import read_metrics
from tests.multiproc import run_ranks
from tests.tiny import build_tokenizer, hf_model, save_hf

EXAMPLES = [{"prompt": f"What is {a} times 7?", "completion": f"The answer is {a * 7}."} for a in range(24)]
KEYS = ("step", "loss", "grad_norm", "lr", "target_tokens")


def _run(tok_dir, model_dir, output_dir, **overrides):
    config = SFTConfig(output_dir=str(output_dir), max_steps=4, lr=1e-3, batch_size=6, micro_batch_size=2,
                       save_every=2, **overrides)
    return SFT(am.from_pretrained(model_dir), am.Tokenizer.from_pretrained(tok_dir), config)


def _worker(rank, tok_dir, model_dir, root):
    full = _run(tok_dir, model_dir, root / "full")  # the trainer joins the group and shards the model
    full.train(EXAMPLES)
    cut = _run(tok_dir, model_dir, root / "cut")
    real_step = cut.step

    def step(batch):
        row = real_step(batch)
        if cut.step_count == 2 and rank == 0:  # only one rank is told to stop
            cut._stop.set()
        return row

    cut.step = step
    out = cut.train(EXAMPLES)
    _run(tok_dir, model_dir, root / "cut", resume=True).train(EXAMPLES)
    return {"stopped_at": out["step"], "interrupted": out["interrupted"]}


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_sharded(tmp_path):
    tok_dir = build_tokenizer(tmp_path / "tok")
    model_dir = save_hf(hf_model("qwen2", seed=8), tmp_path / "model")
    _run(tok_dir, model_dir, tmp_path / "single").train(EXAMPLES)
    single = read_metrics(tmp_path / "single" / "metrics.jsonl")
    for report in run_ranks(_worker, str(tok_dir), str(model_dir), tmp_path, tmp_path=tmp_path):
        assert report == {"stopped_at": 2, "interrupted": True}
    full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert [r["step"] for r in full] == [1, 2, 3, 4]  # rank 0 alone wrote it
    for a, b in zip(full, single):
        assert a["target_tokens"] == b["target_tokens"]
        assert abs(a["loss"] - b["loss"]) <= 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4
    cut = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [{k: r[k] for k in KEYS} for r in cut] == [{k: r[k] for k in KEYS} for r in full]
