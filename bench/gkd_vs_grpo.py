"""GKD vs GRPO: training wall-clock from the embedded student to a held-out success target (CPU).

    python bench/gkd_vs_grpo.py                          # seeds 0 1 2, targets 60/70/80%, 300 s budget per run
    python bench/gkd_vs_grpo.py --seeds 0 --targets 0.7 --budget 120

The seed's headline claim (GKD is 9-30x faster than GRPO), measured on the embedded task: from the embedded
student (25.8% held-out, where GRPO gets a signal), the training wall-clock of GKD (configs/gkd.yaml: the
embedded teacher, lr 1e-3, 16 prompts per step) and GRPO (configs/grpo.yaml: lr 1e-4, 8 prompts x 8
generations) to each of `--targets` greedy success on the first `--eval-n` held-out questions
(atlas.train.evaluate.greedy_eval, 12 new tokens, the task's rule), evaluated every `--every` steps.
Reported: the first evaluation at or above a target, and the first of two in a row (a single lucky
evaluation of a noisy curve does not count). Evaluation and setup are excluded from the clock; each run
has `--budget` seconds of training and stops once the highest target held twice; a target not reached is
"> budget", never left out. Each (method, seed) runs in its own subprocess, alternating; `--seeds` sets
train.seed (data order and sampling streams). Both recipes run exactly as `atlas train` would build them
(atlas.recipes.build), one process, fp32.

Left out: GPU runs and larger models, where the teacher's forward and the rollouts' lengths weigh
differently.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from gkd_step import Tenants
from sft_step import load, machine, versions

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # see bench/sampler.py: bench/kernels.py must not shadow the `kernels` package

def target_child(args) -> None:
    """One (method, seed) run: train until the target or the budget; prints JSON with the eval curve."""
    torch.set_num_threads(args.threads)
    from atlas.recipes import build, load_recipe
    from atlas.reward import answer_match
    from atlas.train.data import DataOrder
    from atlas.train.evaluate import greedy_eval

    recipe = load_recipe(None, [f"train.seed={args.seed}", f"train.output_dir={args.workdir}",
                                f"data.eval_limit={args.eval_n}"], default=args.method)  # configs/<method>.yaml
    trainer, train, evals, _ = build(recipe)
    data = trainer.prepare(train)
    order = DataOrder(len(data), recipe.train.seed)

    def held_out() -> float:
        return greedy_eval(trainer.model, trainer.tokenizer, evals, answer_match, max_new_tokens=12)["success_rate"]

    curve = [(0, 0.0, held_out())]
    train_s, goal = 0.0, max(args.targets)
    while train_s < args.budget and reach(curve, goal, held=2) is None:
        batch = [data[i] for i in order.take(trainer.batch_size)] if trainer.needs_batch() else None
        t0 = time.perf_counter()
        trainer.step(batch)
        train_s += time.perf_counter() - t0
        if trainer.step_count % args.every == 0:
            curve.append((trainer.step_count, train_s, held_out()))
    print(json.dumps(dict(method=args.method, seed=args.seed, curve=curve, train_s=train_s, steps=trainer.step_count,
                          step_s=train_s / max(1, trainer.step_count))))


def reach(curve: list, goal: float, held: int = 1) -> tuple[int, float] | None:
    """(step, training seconds) of the first evaluation that starts `held` consecutive ones at or above goal
    (held = 2: a noisy curve's single lucky evaluation does not count); None: not within the budget."""
    return next(((s, t) for i, (s, t, _) in enumerate(curve) if len(curve[i:i + held]) == held and
                 all(a >= goal for _, _, a in curve[i:i + held])), None)


def target(args, root: Path) -> None:
    tenants = Tenants()
    print(f"\ntime to {', '.join(f'{g:.0%}' for g in args.targets)} greedy held-out success (first {args.eval_n} eval "
          f"questions, every {args.every} steps, budget {args.budget:.0f} s of training per run); {load()}", flush=True)
    runs = []
    for seed in args.seeds:
        for method in ("gkd", "grpo"):
            out = subprocess.run([sys.executable, __file__, "--child", "--method", method, "--seed",
                                  str(seed), "--workdir", str(root / f"{method}-{seed}"), "--every", str(args.every),
                                  "--budget", str(args.budget), "--eval-n", str(args.eval_n), "--threads",
                                  str(args.threads), "--targets", *map(str, args.targets)],
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            points = ", ".join(f"({s}, {t:.0f}, {a:.0%})" for s, t, a in runs[-1]["curve"])
            print(f"  {method} seed {seed}, {runs[-1]['step_s']:.3f} s/step (step, train s, success): {points}; "
                  f"{tenants.since()}", flush=True)
    print("Time to target, training seconds (step): first evaluation at or above it / first of two in a row")
    print("| method | seed | start | " + " | ".join(f"to {g:.0%}" for g in args.targets) + " | s/step | best |\n"
          "|---|---|---|" + "---|" * (len(args.targets) + 2))

    def fmt(hit: tuple[int, float] | None) -> str:
        return f"{hit[1]:.1f} ({hit[0]})" if hit else f"> {args.budget:.0f}"

    for x in runs:
        cells = [f"{fmt(reach(x['curve'], g))} / {fmt(reach(x['curve'], g, held=2))}" for g in args.targets]
        print(f"| {x['method']} | {x['seed']} | {x['curve'][0][2]:.1%} | " + " | ".join(cells) +
              f" | {x['step_s']:.3f} | {max(c[2] for c in x['curve']):.1%} |")
    for g in args.targets:
        for held in (1, 2):
            med = {m: statistics.median((reach(x["curve"], g, held) or (0, float("inf")))[1] for x in runs
                                        if x["method"] == m) for m in ("gkd", "grpo")}
            ratio = f"{med['grpo'] / med['gkd']:.2f}x" if max(med.values()) < float("inf") else "n/a (> budget)"
            print(f"to {g:.0%} ({'first' if held == 1 else 'two in a row'}): median GKD {med['gkd']:.1f} s, GRPO "
                  f"{med['grpo']:.1f} s, GRPO / GKD = {ratio} (the seed claims 9-30x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.6, 0.7, 0.8], help="held-out success goals")
    ap.add_argument("--every", type=int, default=10, help="evaluate every this many steps")
    ap.add_argument("--budget", type=float, default=300.0, help="training seconds per run")
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--method", "--workdir"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        target_child(args)
        return
    print(f"machine: {machine()}, {args.threads} threads; {versions()}; {load()}")
    with tempfile.TemporaryDirectory() as d:
        target(args, Path(d))
    print(f"done; {load()}")


if __name__ == "__main__":
    main()
