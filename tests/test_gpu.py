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
