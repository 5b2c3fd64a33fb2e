"""GPU-only: a bf16 GRPO step on CUDA with NCCL, FSDP2 and the Triton kernels (skipped without CUDA)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.gpu
def test_bf16_grpo_steps_on_cuda_with_nccl_fsdp2_and_triton(tmp_path):
    out = tmp_path / "gpu.json"
    n = min(2, torch.cuda.device_count())
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
                           str(Path(__file__).with_name("gpu_step.py")), str(out)], capture_output=True, text=True,
                          timeout=900, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["backend"] == "cuda" and "nccl" in report["nccl"]
    steps = [r for r in report["rows"] if "reward_mean" in r]
    assert len(steps) == 2 and all(r["skipped"] == 0 for r in steps)
    # bf16 through the same kernel on both sides: a gap the size of bf16 noise, not of a wrong expression
    assert all(r["logprob_gap_mean"] < 0.05 for r in steps)


def test_the_gpu_check_imports_plans_and_runs_on_the_cpu(tmp_path):
    """bench/gpu.py, the one command a lent GPU runs: its dry run plans every item from the shapes alone, and
    its CPU smoke run (tiny shape, Triton's interpreter) takes the items' code paths, so a lent GPU's few
    minutes are not spent finding a typo."""
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
    dry = subprocess.run([sys.executable, str(script), "--dry-run", "--out", str(tmp_path / "plan.json")],
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr[-2000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["items"] == ["gpu_tests", "kernels", "logprob_gap", "graph_parity", "decode", "grpo_step"]
    assert plan["plan"]["weight_bytes_bf16"] == 2 * 494_032_768  # Qwen2.5-0.5B's parameter count, in bf16
    smoke = subprocess.run([sys.executable, str(script), "--smoke", "--only", "kernels", "logprob_gap", "grpo_step",
                            "--out", str(tmp_path / "smoke.json")], capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "smoke.json").read_text())["results"]
    assert smoke.returncode == 0 and all(r["status"] == "ok" for r in report.values()), smoke.stdout + smoke.stderr
    assert "| grpo_step | ok |" in smoke.stdout and report["grpo_step"]["figures"]["tokens"] > 0
