"""What a run reports: `output_dir/metrics.jsonl`, a one-line progress display, and W&B when asked for.

metrics.jsonl holds one JSON object per optimizer step (`step` counts from 1) and one per evaluation
(its keys prefixed `eval_`, its `step` the optimizer steps done before it, 0 for the baseline), in
order, written by global rank 0 only and flushed per row. Values arrive already reduced over ranks (the
trainers reduce sums and counts before they log). On resume the rows after the checkpoint's step are cut
off first, so the file reads as one uninterrupted run.

The progress display is one line on stderr, rewritten in place on a terminal (tqdm style) with the step,
a few headline values, elapsed time and an ETA from the mean step time so far; when stderr is not a
terminal (CI, a log file) it prints a line at every tenth of the run instead, not one per step.

W&B: `wandb_project` set in the config starts a run on rank 0 (its name the run's, its config the
resolved one) and logs every row; asking for it without wandb installed is a ValueError.

Left out: TensorBoard, per-rank metric files, system metrics (GPU memory, utilisation).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

HEADLINE = ("loss", "reward_mean", "eval_loss", "eval_success_rate", "eval_taught_accuracy", "lr")


class Metrics:
    """Rows to metrics.jsonl (+ W&B) and the progress line; a no-op on every rank but global rank 0."""

    def __init__(self, output_dir: str | Path, max_steps: int, *, main: bool, resume_step: int | None = None,
                 wandb_project: str | None = None, run_name: str | None = None, config: dict | None = None):
        self.main = main
        self.max_steps = max_steps
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tty = sys.stderr.isatty()
        self._t0 = time.perf_counter()
        self._first_step: int | None = None
        self._last_printed = -1
        self._wandb = None
        if not main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            truncate(self.path, resume_step)
        if wandb_project:
            try:
                import wandb
            except ImportError as e:
                raise ValueError("wandb_project is set but wandb is not installed: pip install wandb, or unset "
                                 "wandb_project") from e
            self._wandb = wandb.init(project=wandb_project, name=run_name, config=config,
                                     resume="allow" if resume_step is not None else None)

    def log(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        row = {k: _plain(v) for k, v in row.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        self._progress(row)

    def _progress(self, row: dict[str, Any]) -> None:
        step = row["step"]
        if self._first_step is None and not any(k.startswith("eval_") for k in row):
            self._first_step, self._t0 = step, time.perf_counter()
        done = 0 if self._first_step is None else step - self._first_step + 1
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / done * (self.max_steps - step) if done > 0 else float("nan")
        values = " ".join(f"{k}={_short(row[k])}" for k in HEADLINE if k in row)
        line = f"step {step}/{self.max_steps} {values} | {_clock(elapsed)} elapsed, ETA {_clock(eta)}"
        if self._tty:
            sys.stderr.write("\r\033[K" + line)
            if step >= self.max_steps:
                sys.stderr.write("\n")
        elif step >= self.max_steps or step * 10 // self.max_steps > self._last_printed or "eval_" in values:
            self._last_printed = step * 10 // self.max_steps
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self.main and self._tty:
            sys.stderr.write("\n")


def truncate(path: Path, step: int) -> None:
    """Drop the rows of steps after `step` (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
