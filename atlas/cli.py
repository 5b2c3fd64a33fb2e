"""The `atlas` command (also `python -m atlas.cli`).

    atlas traces stats SOURCE [--review-status S ...] [--status S ...] [--min-reward X]
                              [--learning-key K] [--created-after ISO] [--limit N] [--skip-malformed] [--json]

Each command is a subparser whose handler takes the parsed arguments and returns the exit code; later
commands (`atlas train ...`) are added the same way in `build_parser`. Bad input (a malformed trace, an
unreachable database) ends with a one-line error on stderr and exit code 2 (1 for connection failures),
not a traceback.

Left out: configuration files and shell completion.
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
    return parser


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
    args = build_parser().parse_args(argv)
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
