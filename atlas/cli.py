"""The `atlas` command (also `python -m atlas.cli`).

    atlas traces stats SOURCE [--review-status S ...] [--status S ...] [--min-reward X]
                              [--learning-key K] [--created-after ISO] [--limit N] [--skip-malformed] [--json]
    atlas train RECIPE.yaml [--dry-run] [key=value ...]    # traces=SOURCE, min_reward=0.8, lr=1e-5, model=...
    atlas eval CHECKPOINT [--config RECIPE.yaml] [key=value ...]   # held-out success rate, mean tokens
    atlas plot RUN_DIR [--out FILE.png]                    # curves of metrics.jsonl

Each command is a subparser whose handler takes the parsed arguments and returns the exit code; later
commands (`atlas train ...`) are added the same way in `build_parser`. Bad input (a malformed trace, an
unreachable database) ends with a one-line error on stderr and exit code 2 (1 for connection failures),
not a traceback.

Left out: shell completion.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atlas", description="Turn an agent's runtime traces into checkpoints.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    traces = commands.add_parser("traces", help="inspect runtime traces (JSONL exports or Postgres)")
    traces_commands = traces.add_subparsers(dest="traces_command", required=True, metavar="SUBCOMMAND")
    stats = traces_commands.add_parser(
        "stats",
        help="counts, reward distribution and lengths of a trace source",
        description="Describe a trace source: review/status counts, rewards, lengths, what gating excludes. "
        "Every session is read unless --review-status is given.",
    )
    stats.add_argument("source", help="a .jsonl / .jsonl.gz export or a postgresql:// URL")
    stats.add_argument("--review-status", action="append", metavar="S",
                       help="only these review statuses (repeatable; default: all)")  # fmt: skip
    stats.add_argument("--status", action="append", metavar="S", help="only these session statuses (repeatable)")
    stats.add_argument("--min-reward", type=float, metavar="X", help="only sessions with reward >= X")
    stats.add_argument("--learning-key", metavar="K", help="only sessions of this learning key")
    stats.add_argument("--created-after", metavar="ISO", help="only sessions created at or after this time")
    stats.add_argument("--limit", type=int, metavar="N", help="read at most N sessions")
    stats.add_argument("--skip-malformed", action="store_true",
                       help="skip and count malformed records instead of stopping at the first")  # fmt: skip
    stats.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    stats.set_defaults(handler=_traces_stats)

    train = commands.add_parser(
        "train", help="run a recipe (configs/sft.yaml, grpo.yaml, gkd.yaml, teacher.yaml)",
        description="Train from a recipe. Overrides: traces=SOURCE (a JSONL export or postgresql:// URL), the data "
        "filters (review_status=, min_reward=, status=, learning_key=, limit=), recipe keys (model=, teacher=, "
        "reward=) and trainer keys (lr=, max_steps=, output_dir=, resume=true, ...).")
    train.add_argument("recipe", help="a recipe YAML")
    train.add_argument("--dry-run", action="store_true",
                       help="print the resolved recipe and what it would train on, then exit (offline)")
    train.add_argument("overrides", nargs="*", metavar="key=value")
    train.set_defaults(handler=_train)

    ev = commands.add_parser("eval", help="held-out greedy success rate and mean tokens of a checkpoint",
                             description="Evaluate a checkpoint on the eval split atlas train holds out (the same "
                             "data settings give the same split).")
    ev.add_argument("checkpoint", help="a checkpoint directory (e.g. results/<run>/hf) or embedded:<name>")
    ev.add_argument("--config", help="the recipe whose data and reward to use (default: configs/grpo.yaml)")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="traces=SOURCE, data filters, reward=rim")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(handler=_eval)

    plot = commands.add_parser("plot", help="reward / loss / KL / accuracy curves of a run to a PNG")
    plot.add_argument("run_dir", help="a run's output_dir (holding metrics.jsonl)")
    plot.add_argument("--out", help="the PNG to write (default: RUN_DIR/metrics.png)")
    plot.set_defaults(handler=_plot)
    return parser


def _train(args: argparse.Namespace) -> int:
    from atlas.recipes import execute, expand_overrides, load_recipe

    return execute(load_recipe(args.recipe, expand_overrides(args.overrides)), dry_run=args.dry_run)


def _eval(args: argparse.Namespace) -> int:
    from atlas.recipes import evaluate_checkpoint, expand_overrides, load_recipe

    result = evaluate_checkpoint(args.checkpoint, load_recipe(args.config, expand_overrides(args.overrides),
                                                              default="grpo"))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['checkpoint']}: held-out success rate {result['success_rate']:.1%}, mean completion tokens "
              f"{result['mean_tokens']:.1f} ({result['n']} examples, greedy)")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from atlas.train.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


def _traces_stats(args: argparse.Namespace) -> int:
    from atlas.data.stats import trace_stats

    stats = trace_stats(
        args.source, review_status=args.review_status, min_reward=args.min_reward,
        learning_key=args.learning_key, status=args.status, limit=args.limit,
        created_after=args.created_after, on_error="skip" if args.skip_malformed else "raise",
    )  # fmt: skip
    print(json.dumps(stats.as_dict(), indent=2) if args.json else stats.to_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after an option (`train R.yaml --dry-run traces=x`): argparse leaves those
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.handler(args)
    except ConnectionError as exc:
        print(f"atlas: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"atlas: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
