"""The examples as a new user runs them (tiny budgets), and the committed embedded checkpoints."""

import subprocess
import sys
from pathlib import Path

import pytest

import atlas.model as am
from atlas.embedded import model_path, task
from atlas.reward import answer_match
from atlas.train.evaluate import greedy_eval
from atlas.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def test_the_embedded_checkpoints_are_where_the_examples_need_them():
    """The student is weak but not hopeless (GRPO gets a signal), the teacher strong, the student smaller."""
    scores = {}
    for name in ("student", "teacher"):
        path = model_path(name)
        scores[name] = greedy_eval(am.from_pretrained(path), am.Tokenizer.from_pretrained(path),
                                   task.examples("eval"), answer_match, max_new_tokens=12)["success_rate"]
    assert 0.10 <= scores["student"] <= 0.40 and scores["teacher"] >= 0.90
    sizes = {n: sum(p.numel() for p in am.from_pretrained(model_path(n)).parameters()) for n in scores}
    assert sizes["student"] < sizes["teacher"]


def _run(cmd, tmp_path):
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_grpo_example_runs_and_reports(tmp_path):
    stdout = _run([sys.executable, str(ROOT / "examples" / "grpo.py"), "max_steps=4", "eval_every=4",
                   "save_every=2", "data.eval_limit=40", "--output-dir", "out"], tmp_path)
    assert "reward: first 10% of steps" in stdout and "held-out accuracy:" in stdout
    assert f"HF checkpoint: {tmp_path / 'out' / 'hf'}" in stdout or "HF checkpoint: out/hf" in stdout
    assert [r["step"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl")] == [0, 1, 2, 3, 4, 4]


def test_sft_example_runs_and_reports(tmp_path):
    stdout = _run([sys.executable, str(ROOT / "examples" / "sft.py"), "max_steps=3", "eval_every=3",
                   "data.eval_limit=40", "train.output_dir=sft"], tmp_path)
    assert "held-out loss:" in stdout and "held-out accuracy:" in stdout


@pytest.mark.slow
def test_the_readme_main_command_runs_on_two_processes(tmp_path):
    stdout = _run(["torchrun", "--nproc_per_node=2", str(ROOT / "examples" / "grpo.py"), "max_steps=3",
                   "eval_every=3", "data.eval_limit=20", "--output-dir", "two"], tmp_path)
    assert stdout.count("HF checkpoint:") == 1  # global rank 0 alone reports
    assert (tmp_path / "two" / "hf" / "model.safetensors").exists()


def test_agent_example_runs_through_its_tool_and_reports(tmp_path):
    stdout = _run([sys.executable, str(ROOT / "examples" / "agent.py"), "max_steps=3", "eval_every=3",
                   "data.eval_limit=24", "--output-dir", "agent"], tmp_path)
    assert "held-out accuracy:" in stdout and "tool use (held-out):" in stdout
    rows = read_metrics(tmp_path / "agent" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 3] and all(r["tool_calls_mean"] > 0 for r in rows[1:4])


@pytest.mark.slow
def test_the_agent_example_runs_on_two_processes_and_as_an_environment(tmp_path):
    stdout = _run(["torchrun", "--nproc_per_node=2", str(ROOT / "examples" / "agent.py"), "max_steps=2",
                   "eval_every=2", "data.eval_limit=16", "--environment", "atlas.embedded.shop:Shop", "tools=null",
                   "--output-dir", "two"], tmp_path)
    assert stdout.count("tool use (held-out):") == 1
    rows = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert rows[-1]["eval_n"] == 16 and rows[-1]["eval_tool_calls_mean"] > 0


def test_gkd_example_runs_and_reports(tmp_path):
    stdout = _run([sys.executable, str(ROOT / "examples" / "gkd.py"), "max_steps=3", "eval_every=3",
                   "data.eval_limit=40", "--output-dir", "gkd"], tmp_path)
    assert "held-out accuracy:" in stdout and "teacher (the ceiling):" in stdout
    rows = read_metrics(tmp_path / "gkd" / "metrics.jsonl")
    assert "eval_success_delta" in rows[-1] and "eval_token_reduction_pct" in rows[-1]


def test_teacher_example_runs_and_reports(tmp_path):
    stdout = _run([sys.executable, str(ROOT / "examples" / "teacher.py"), "max_steps=2", "eval_every=2",
                   "data.eval_limit=16", "prompts_per_step=4", "num_generations=4", "--output-dir", "teach"], tmp_path)
    assert "student held-out accuracy alone / with the teacher's teaching" in stdout
    assert (tmp_path / "teach" / "best_teaching.json").exists()


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_and_resume_continues(tmp_path):
    """SIGTERM to torchrun (which forwards it): both workers finish their step, agree on it, save, say so
    and exit; resume=true continues from that step."""
    import signal
    import time

    args = [str(ROOT / "examples" / "grpo.py"), "max_steps=400", "eval_every=0", "save_every=0", "--output-dir", "s"]
    proc = subprocess.Popen(["torchrun", "--nproc_per_node=2", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "s" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert "interrupted by SIGTERM" in stdout
    (state,) = (tmp_path / "s" / "checkpoints").iterdir()
    stopped = int(state.name.removeprefix("step_"))
    assert (state / "COMPLETE").exists() and len(read_metrics(metrics)) == stopped
    _run([sys.executable, *args[:1], f"max_steps={stopped + 2}", "resume=true", "eval_every=0", "--output-dir", "s"],
         tmp_path)
    assert [r["step"] for r in read_metrics(metrics)] == list(range(1, stopped + 3))
