"""The `atlas` command (also `python -m atlas.cli`), and the command line every example shares.

    atlas traces stats SOURCE [--review-status S ...] [--status S ...] [--min-reward X]
                              [--learning-key K] [--created-after ISO] [--limit N] [--skip-malformed] [--json]
    atlas train RECIPE.yaml [--dry-run] [key=value ...]    # traces=SOURCE, min_reward=0.8, lr=1e-5, model=...
    atlas eval CHECKPOINT [--config RECIPE.yaml] [key=value ...]   # held-out success rate, mean tokens
    atlas plot RUN_DIR [--out FILE.png]                    # curves of metrics.jsonl
    python examples/grpo.py [--config RECIPE.yaml] [--dry-run] [--model M] [--output-dir DIR] [key=value ...]

Each command is a subparser whose handler takes the parsed arguments and returns the exit code. A recipe's
command line (`--dry-run` and `key=value` overrides, atlas.recipes' shorthands) is defined once
(`add_recipe_arguments`) for `atlas train` and for the examples (`run_example`: configs/<name>.yaml, the
example's own flags such as `--model`, then its training function in plain API calls). Running a recipe
prints its closing lines on global rank 0 (`report_lines`: the reward over the first and last tenth of
the steps, the evaluations before and after, the HF checkpoint); `--dry-run` prints one JSON object
instead (the resolved recipe, the data kept and excluded, one rendered prompt), loading no weights.
Bad input (a malformed trace, an unreachable database, a misspelt key) ends with a one-line error on
stderr and exit code 2 (1 for connection failures), not a traceback.

Left out: shell completion.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main", "run_example"]


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """--dry-run and the key=value overrides: a recipe's command line, for `atlas train` and the examples."""
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved recipe and what it would train on, then exit (offline)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides: traces=SOURCE, data filters (min_reward=...), model=..., lr=...")


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
    add_recipe_arguments(train)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    return _guarded(lambda: args.handler(args))


def run_example(name: str, train: Callable[[Any], dict[str, Any]], flags: dict[str, str],
                argv: Sequence[str] | None = None) -> int:
    """An example's command line: [--config FILE] [--dry-run] [its flags] [key=value ...] over
    configs/<name>.yaml (`flags` maps its own options, e.g. "--model", to recipe keys, e.g. "model"); then
    `train(recipe)` (the example's own API calls, returning `Trainer.train`'s result) under torchrun or
    plain python, and the closing lines."""
    from atlas.recipes import load_recipe

    parser = argparse.ArgumentParser(description=f"run the {name} recipe")
    parser.add_argument("--config", help=f"a recipe YAML (default: configs/{name}.yaml)")
    for flag, key in flags.items():
        parser.add_argument(flag, dest=key.replace(".", "__"), metavar=key.upper().split(".")[-1], help=f"sets {key}")
    add_recipe_arguments(parser)
    args = _parse(parser, argv)
    overrides = [f"{key}={value}" for key in flags.values()
                 if (value := getattr(args, key.replace(".", "__"))) is not None]
    return _guarded(lambda: _execute(load_recipe(args.config, overrides + args.overrides, default=name),
                                     args.dry_run, train))


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_known_args, then key=value overrides that came after an option (`train R.yaml --dry-run x=1`)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _guarded(run: Callable[[], int]) -> int:
    try:
        return run()
    except ConnectionError as exc:
        print(f"atlas: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"atlas: error: {exc}", file=sys.stderr)
        return 2


def _execute(recipe, dry_run: bool, train: Callable[[Any], dict[str, Any]]) -> int:
    """Run (or describe) a recipe with `train`, printing its closing lines on global rank 0."""
    import atlas.distributed as ad
    from atlas.train.metrics import read_metrics

    try:
        if dry_run:
            print(json.dumps(dry_run_report(recipe), indent=2, default=str))
            return 0
        ad.init()
        ad.setup_logging()
        result = train(recipe)
        if ad.is_main():
            rows = read_metrics(Path(recipe.train.output_dir) / "metrics.jsonl")
            print("\n".join(report_lines(summarize(rows), result)))
        return 0
    finally:
        ad.shutdown()


def _train(args: argparse.Namespace) -> int:
    from atlas.recipes import build, load_recipe

    def train(recipe):
        trainer, train_examples, eval_examples, _ = build(recipe)
        return trainer.train(train_examples, eval_examples)

    return _execute(load_recipe(args.recipe, args.overrides), args.dry_run, train)


def dry_run_report(recipe) -> dict[str, Any]:
    """What a run would do, without loading weights or training: the resolved recipe, the data (sessions
    kept and excluded by reason, examples per split, the transcripts and tool schemas of a trajectory
    dataset) and its first example: the prompt rendered, and for SFT and GKD the whole training text and
    `sample_trained_spans` (the decoded text of each run of trained tokens: what the model learns to write)."""
    import atlas.model as am
    from atlas.data.stats import TranscriptStats
    from atlas.recipes import agent_tools, describe, load_data
    from atlas.train.agent import Toolbox
    from atlas.train.data import as_conversation, encode_conversation, prompt_messages, tools_of

    train, evals, report = load_data(recipe, allow_empty=True)
    tokenizer = am.Tokenizer.from_pretrained(recipe.path(recipe.model), chat_template=recipe.chat_template)
    notes = []
    for name, split, small in (("train", train, 1), ("eval", evals, 20)):
        if len(split) < small or not split:
            notes.append(f"the {name} split is {'empty' if not split else 'small'} ({len(split)} examples)")
    out: dict[str, Any] = {"recipe": describe(recipe), "data": report, "sample_prompt": None, "notes": notes}
    if report.get("format") == "trajectory":
        transcripts = TranscriptStats()
        for e in [*train, *evals]:
            if e.messages:
                transcripts.add(e.messages)
        for key, n in report["examples"].items():
            if key.startswith("answer_form:unreadable:"):
                transcripts.unreadable[key.removeprefix("answer_form:unreadable:")] += n
        report["transcripts"] = transcripts.as_dict()
    if not (train or evals):
        return out
    first = (train or evals)[0]
    messages = prompt_messages(first)
    if recipe.recipe == "teacher":  # what the teacher is prompted with; the diagnostic comes at run time
        question = [m["content"] for m in messages if m["role"] == "user"][-1]
        messages = [{"role": "user", "content": recipe.train.teacher_prompt.format(
            question=question, diagnostic="<the student's diagnostic>")}]
    schemas = tools_of(first)
    if recipe.tools or recipe.environment:  # what GRPO's agent is shown: the recipe's tools, checked as it would
        try:
            toolbox = Toolbox(tokenizer, **agent_tools(recipe))
            schemas = toolbox.schemas
            out["tools"] = {"names": [s["function"]["name"] for s in schemas], "call_format": toolbox.format,
                            "environment_reward": toolbox.reward_name}
        except ValueError as e:
            notes.append(f"the tools cannot run: {e}")
    out["sample_prompt"] = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=schemas)
    if recipe.recipe in ("sft", "gkd"):
        conversation = as_conversation(first)
        out["sample_example"] = tokenizer.apply_chat_template(conversation, add_generation_prompt=False,
                                                              tools=tools_of(first))
        try:
            out["sample_trained_spans"] = [tokenizer.decode(run) for ids, mask in encode_conversation(
                tokenizer, conversation, tools_of(first)) for run in _runs(ids, mask)]
        except ValueError as e:  # what training would stop on: said here, with the data report beside it
            out["sample_trained_spans"] = None
            notes.append(f"the first example cannot be trained on: {e}")
    return out


def _runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    """The runs of masked tokens of a sequence."""
    runs: list[list[int]] = []
    for t, (i, m) in enumerate(zip(ids, mask)):
        if m:
            (runs[-1] if t and mask[t - 1] else runs.append([]) or runs[-1]).append(i)
    return runs


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The first and last tenth of the steps' rewards, and the first and last evaluation."""
    steps = [r for r in rows if not any(k.startswith("eval_") for k in r)]
    evals = [r for r in rows if any(k.startswith("eval_") for k in r)]
    out: dict[str, Any] = {"steps": len(steps)}
    if steps and "reward_mean" in steps[0]:
        tenth = max(1, len(steps) // 10)
        out["reward_first_10pct"] = sum(r["reward_mean"] for r in steps[:tenth]) / tenth
        out["reward_last_10pct"] = sum(r["reward_mean"] for r in steps[-tenth:]) / tenth
    if steps and "loss" in steps[0]:
        out["loss_first"], out["loss_last"] = steps[0]["loss"], steps[-1]["loss"]
    if evals:
        out["eval_before"] = {k: v for k, v in evals[0].items() if k.startswith("eval_")}
        out["eval_after"] = {k: v for k, v in evals[-1].items() if k.startswith("eval_")}
    return out


def report_lines(s: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """The closing lines of a run: its summary (`summarize`) and `Trainer.train`'s result."""
    lines = []
    if "reward_first_10pct" in s:
        lines.append(f"reward: first 10% of steps {s['reward_first_10pct']:.3f}, last 10% {s['reward_last_10pct']:.3f} "
                     f"({s['reward_last_10pct'] - s['reward_first_10pct']:+.3f}) over {s['steps']} steps")
    before, after = s.get("eval_before", {}), s.get("eval_after", {})
    if "eval_loss" in before:
        lines.append(f"held-out loss: {before['eval_loss']:.4f} before, {after['eval_loss']:.4f} after")
    if "eval_success_rate" in before:
        lines.append(f"held-out accuracy: {before['eval_success_rate']:.1%} before, {after['eval_success_rate']:.1%} "
                     f"after ({after['eval_n']} questions, greedy); mean completion tokens "
                     f"{before['eval_mean_tokens']:.1f} -> {after['eval_mean_tokens']:.1f}")
    if "eval_tool_calls_mean" in before:  # an agent's evaluation, through its tools
        def errors(e):
            found = {k.removeprefix("eval_tool_error_frac_"): v for k, v in e.items()
                     if k.startswith("eval_tool_error_frac_") and v}
            return ", ".join(f"{k} {v:.1%}" for k, v in found.items()) or "none"

        lines.append(f"tool use (held-out): {before['eval_tool_calls_mean']:.2f} calls per rollout before, "
                     f"{after['eval_tool_calls_mean']:.2f} after; turns {before['eval_turns_mean']:.2f} -> "
                     f"{after['eval_turns_mean']:.2f}; tool errors by reason (share of calls): before "
                     f"{errors(before)}; after {errors(after)}")
    if "eval_taught_accuracy" in before:
        lines.append(f"student held-out accuracy alone / with the teacher's teaching: start "
                     f"{before['eval_baseline_accuracy']:.1%} / {before['eval_taught_accuracy']:.1%}, end "
                     f"{after['eval_baseline_accuracy']:.1%} / {after['eval_taught_accuracy']:.1%} "
                     f"({after['eval_n']} questions, greedy)")
    if "eval_teacher_success_rate" in after:
        lines.append(f"teacher (the ceiling): {after['eval_teacher_success_rate']:.1%} held-out, mean completion "
                     f"tokens {after['eval_teacher_mean_tokens']:.1f}; student success delta "
                     f"{after['eval_success_delta']:+.1f} points, "
                     f"token reduction {after['eval_token_reduction_pct']:.1f}%")
    if result.get("interrupted"):
        lines.append("interrupted by SIGTERM: the resume state is saved; rerun with resume=true to continue")
    lines.append(f"HF checkpoint: {result['hf']}")
    return lines


def _eval(args: argparse.Namespace) -> int:
    """Held-out greedy success rate and mean tokens of a checkpoint on a recipe's eval split (the split
    `atlas train` held out with the same data settings), by the recipe's reward (rule, rim, and an
    environment's get_reward), through the recipe's tools when it has them (GRPO's tool loop and limits)."""
    import atlas.distributed as ad
    import atlas.model as am
    from atlas.recipes import agent_tools, load_data, load_recipe, resolve_path, reward_fns
    from atlas.train.agent import Toolbox
    from atlas.train.evaluate import greedy_eval

    recipe = load_recipe(args.config, args.overrides, default="grpo")
    _, evals, report = load_data(recipe)
    if not evals:
        raise ValueError(f"the eval split of {recipe.data.source!r} is empty with these filters: {report}")
    path = resolve_path(args.checkpoint, ".")
    ad.init()
    model = am.from_pretrained(path, device=ad.device())
    tokenizer = am.Tokenizer.from_pretrained(path, chat_template=recipe.chat_template)
    train = recipe.train
    max_new = getattr(train, "eval_max_new_tokens", None) or getattr(train, "max_new_tokens", 256)
    tools, rewards = agent_tools(recipe), reward_fns(recipe)
    weights = getattr(train, "reward_weights", None) or [1.0] * len(rewards)
    toolbox = None
    if tools:  # only a grpo recipe has tools: its config holds the loop's limits
        toolbox = Toolbox(tokenizer, **tools, max_turns=train.max_turns, timeout_s=train.tool_timeout_s,
                          max_output_tokens=train.max_tool_output_tokens)
        if toolbox.reward_name is not None:  # weight 1, as GRPO adds it
            rewards, weights = [*rewards, toolbox.reward], [*weights, 1.0]

    def reward(prompts, completions, **columns):  # GRPO.reward's weighted sum
        scores = [fn(prompts, completions, **columns) for fn in rewards]
        return [sum(w * v for w, v in zip(weights, values)) for values in zip(*scores)]

    result = {"checkpoint": path, **greedy_eval(model, tokenizer, evals, reward, max_new_tokens=max_new,
                                                toolbox=toolbox)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        tool_use = (f"; {result['turns_mean']:.1f} turns, {result['tool_calls_mean']:.1f} tool calls, "
                    f"{result['tool_error_frac']:.1%} of them errors" if toolbox else "")
        print(f"{result['checkpoint']}: held-out success rate {result['success_rate']:.1%}, mean completion tokens "
              f"{result['mean_tokens']:.1f} ({result['n']} examples, greedy{tool_use})")
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


if __name__ == "__main__":
    sys.exit(main())
