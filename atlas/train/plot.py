"""Curves of a run: reward, loss, KL and held-out accuracy from metrics.jsonl, to one PNG.

    atlas plot results/grpo-embedded            # -> results/grpo-embedded/metrics.png

One panel per quantity the run logged, against the optimizer step: `reward_mean` (with `reward_std` as a
band), `loss`, `kl`, `eval_success_rate`, `eval_loss`, `entropy`, `grad_norm` (whichever are present).
matplotlib is an optional dependency (`pip install 'atlas[plot]'`); without it this is a ValueError
saying so. Left out: comparisons of several runs in one figure, interactive plots.
"""

from __future__ import annotations

from pathlib import Path

from atlas.train.metrics import read_metrics

PANELS = ("reward_mean", "loss", "kl", "eval_success_rate", "eval_loss", "entropy", "grad_norm")


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"no metrics.jsonl in {run_dir}: pass the output_dir of a run")
    rows = read_metrics(path)
    panels = [k for k in PANELS if any(isinstance(r.get(k), int | float) for r in rows)]
    if not panels:
        raise ValueError(f"{path} has no curve to draw (none of {', '.join(PANELS)})")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ValueError("atlas plot needs matplotlib: pip install 'atlas[plot]' (or pip install matplotlib)") from e
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.5 * cols, 3.2 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 20 else None, linewidth=1.2)
        if key == "reward_mean":
            std = [r.get("reward_std", 0.0) for r in rows if isinstance(r.get(key), int | float)]
            ax.fill_between(steps, [v - s for v, s in zip(values, std)], [v + s for v, s in zip(values, std)],
                            alpha=0.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out = Path(out) if out is not None else run_dir / "metrics.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
