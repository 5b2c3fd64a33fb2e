"""Recipes: one YAML file says a whole run (model, data, trainer config); `atlas train` and examples/*.py
run it through the same code.

    recipe: grpo                        # sft | grpo | gkd | teacher
    model: embedded:student             # the model trained: a checkpoint directory, a hub id, embedded:<name>
    teacher: null                       # gkd: the teacher checkpoint (the same forms)
    student: null                       # teacher recipe: the frozen student's checkpoint, run in-process, or
    student_endpoint: null              #   an OpenAI-compatible base URL serving train.student_model
    chat_template: null                 # "chatml" or Jinja text, only for a checkpoint without one
    reward: rule                        # grpo's reward, gkd's success test: rule (answer_match) | rim (RIM)
    data:
      source: embedded                  # embedded (the built-in task) | traces.jsonl | postgresql://...
      review_status: [approved]         # the Traces filters (atlas.data.load_sessions)
      min_reward: null
      status: null
      eval_fraction: 0.1
      eval_limit: 200                   # held-out examples evaluated (null: all)
    train: {...}                        # the trainer's config: SFTConfig / GRPOConfig / GKDConfig fields

Paths in a recipe (`model`, `teacher`, a JSONL `data.source`) resolve relative to the recipe file, never the
working directory; `embedded:<name>` names a checkpoint shipped in the package (atlas/embedded). A relative
`train.output_dir` is relative to the working directory (where results go is the caller's choice).

Data. `embedded`: the built-in addition task (atlas.embedded.task), its own train/eval split, references
for the rule reward, completions for SFT. A trace source: sessions through `atlas.data.load_sessions`
with the data filters (approved only by default; SFT's default data, as the original's, also wants
`min_reward: 0.8` and `status: succeeded`, set in configs/sft.yaml), then `grpo_examples` (prompts,
references = final answers) or `gkd_examples` (prompt + final answer), deduplicated and split by a stable
hash of the task (GKD, like SFT, takes `gkd_examples`: its off-policy steps train on those completions).

GRPO rewards. `rule`: atlas.reward.answer_match against each example's reference. `rim`: the RIM judges
(atlas.reward.RIM, configured by $ATLAS_REWARD_CONFIG / ATLAS_JUDGE_*); the columns GRPO passes map to
the judges' context keys: `answers` (the reference) -> `reference`, a column already named like a
context key (atlas.reward.judges.CONTEXT_KEYS) as is, and any other column is not sent (the judges
reject unknown keys); which columns were dropped is logged once.

Under torchrun the model is loaded straight into its shards (atlas.distributed.load_pretrained) and the
trainer runs on every rank; only global rank 0 prints.

Left out: sweeps, recipe inheritance, remote data other than Postgres.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

import atlas.distributed as ad
from atlas.config import check_types, from_dict, merge, parse_overrides, read_yaml, to_dict
from atlas.distill import GKD, SFT, GKDConfig, SFTConfig
from atlas.rl import GRPO, GRPOConfig, TeacherConfig, Teaching

logger = logging.getLogger("atlas.recipes")
TRAINERS: dict[str, type] = {"sft": SFTConfig, "grpo": GRPOConfig, "gkd": GKDConfig, "teacher": TeacherConfig}
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class DataSpec:
    source: str = "embedded"
    review_status: list[str] | None = field(default_factory=lambda: ["approved"])
    min_reward: float | None = None
    status: list[str] | None = None
    learning_key: str | None = None
    limit: int | None = None
    on_error: Literal["raise", "skip"] = "raise"
    eval_fraction: float = 0.1
    eval_limit: int | None = 200

    def __post_init__(self) -> None:
        check_types(self, "data.")


@dataclass
class Recipe:
    recipe: Literal["sft", "grpo", "gkd", "teacher"]
    train: Any  # the trainer's config dataclass, by `recipe`
    model: str = "embedded:student"
    teacher: str | None = None
    student: str | None = None
    student_endpoint: str | None = None
    chat_template: str | None = None
    reward: Literal["rule", "rim"] = "rule"
    data: DataSpec = field(default_factory=DataSpec)
    base_dir: str = "."  # where relative paths resolve: the recipe file's folder

    def __post_init__(self) -> None:
        check_types(self)


def load_recipe(path: str | Path | None, overrides: list[str] = (), default: str | None = None) -> Recipe:
    """A recipe from YAML (or configs/<default>.yaml) with `key=value` overrides (`train.lr=1e-5`)."""
    path = Path(path) if path is not None else CONFIGS / f"{default}.yaml"
    raw = merge(read_yaml(path), parse_overrides(list(overrides)))
    name = raw.get("recipe")
    if name not in TRAINERS:
        raise ValueError(f"the recipe's 'recipe' key must be one of {sorted(TRAINERS)}, got {name!r}")
    train = from_dict(TRAINERS[name], raw.pop("train", {}) or {}, "train.")
    data = from_dict(DataSpec, raw.pop("data", {}) or {}, "data.")
    return from_dict(Recipe, {**raw, "train": train, "data": data, "base_dir": str(path.resolve().parent)})


def resolve_path(value: str, base_dir: str) -> str:
    """embedded:<name> -> the package's checkpoint; a relative path that exists next to the recipe -> that;
    anything else (an absolute path, a hub id) as is."""
    if value.startswith("embedded:"):
        from atlas.embedded import model_path

        return str(model_path(value.removeprefix("embedded:")))
    candidate = Path(base_dir) / value
    if not Path(value).is_absolute() and (candidate.exists() or value.startswith(".")):
        return str(candidate)
    return value


def load_model(recipe: Recipe, name: str, param_dtype: str | None, frozen: bool = False):
    """(model, tokenizer, path): a trained model in fp32 (its master weights), a frozen one (reference,
    teacher) in the compute dtype; under torchrun sharded as it is read, else whole (the trainer shards)."""
    import atlas.model as am

    path = resolve_path(name, recipe.base_dir)
    tokenizer = am.Tokenizer.from_pretrained(path, chat_template=recipe.chat_template)
    ad.init()
    compute = None if param_dtype is None else getattr(torch, param_dtype)
    dtype = (compute or torch.float32) if frozen else torch.float32
    if ad.world_size() > 1:
        model = ad.load_pretrained(path, dtype=dtype, param_dtype=None if frozen else compute)
    else:
        model = am.from_pretrained(path, device=ad.device(), dtype=dtype)
    return model, tokenizer, path


def load_data(recipe: Recipe, allow_empty: bool = False) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """(train examples, eval examples, a report of where they came from and what was excluded); no
    training example is a ValueError unless `allow_empty` (a dry run reports it instead)."""
    spec = recipe.data
    if spec.source == "embedded":
        from atlas.embedded import task

        train, evals = task.examples("train"), task.examples("eval")
        report = {"source": "embedded", "task": "two-digit addition (atlas.embedded.task)"}
    else:
        from atlas.data import gkd_examples, grpo_examples, load_sessions

        source = spec.source if spec.source.startswith(("postgresql://", "postgres://")) else resolve_path(
            spec.source, recipe.base_dir)
        sessions = load_sessions(source, review_status=spec.review_status, min_reward=spec.min_reward,
                                 learning_key=spec.learning_key, status=spec.status, limit=spec.limit,
                                 on_error=spec.on_error)
        build = grpo_examples if recipe.recipe in ("grpo", "teacher") else gkd_examples
        split = build(sessions, eval_fraction=spec.eval_fraction)
        train, evals = split.train, split.eval
        report = {"sessions": sessions.as_dict(), "examples": dict(split.counts)}
    if spec.eval_limit is not None:
        evals = evals[:spec.eval_limit]
    report.update(train_examples=len(train), eval_examples=len(evals))
    if not train and not allow_empty:
        raise ValueError(f"no training examples from {spec.source!r} (with these filters): {report}")
    return train, evals, report


def rim_reward():
    """RIM as a GRPO reward function, columns mapped to the judges' context keys (module docstring)."""
    import atlas.reward as ar
    from atlas.reward.judges import CONTEXT_KEYS

    rim = ar.RIM(ar.RIMConfig.load())
    warned: set[str] = set()

    def rim_judges(prompts, completions, **columns):
        context = {}
        for key, values in columns.items():
            target = "reference" if key == "answers" else key
            if target in CONTEXT_KEYS:
                context[target] = values
            elif key not in warned:
                warned.add(key)
                logger.warning("column %r is not a judge context key: not sent to the judges", key)
        return rim(prompts, completions, **context)

    return rim_judges


def provenance(recipe: Recipe, train: list[Any], evals: list[Any], report: dict[str, Any]) -> dict[str, Any]:
    """What a deployed checkpoint was trained from: the recipe (credentials redacted), the data source,
    its filters, the sessions kept and excluded, a digest of the session ids, atlas's version."""
    import hashlib

    import atlas

    ids = sorted(str(e.meta["session_id"]) for e in [*train, *evals]
                 if getattr(e, "meta", None) and e.meta.get("session_id") is not None)
    return {"atlas_version": atlas.__version__, "recipe": describe(recipe), "data": report,
            "session_ids": {"count": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}}


def build(recipe: Recipe):
    """The trainer of a recipe, with its data: (trainer, train examples, eval examples, data report)."""
    trainer, train, evals, report = _trainer(recipe)
    trainer.provenance = provenance(recipe, train, evals, report)
    return trainer, train, evals, report


def _trainer(recipe: Recipe):
    from atlas.reward import answer_match as rule

    train, evals, report = load_data(recipe)
    model, tokenizer, _ = load_model(recipe, recipe.model, recipe.train.param_dtype)
    if recipe.recipe == "sft":
        return SFT(model, tokenizer, recipe.train, reward_fn=rule), train, evals, report
    if recipe.recipe == "gkd":
        if recipe.teacher is None:
            raise ValueError("the gkd recipe needs a teacher: set teacher: <checkpoint> (or --teacher)")
        teacher, teacher_tokenizer, _ = load_model(recipe, recipe.teacher, recipe.train.param_dtype, frozen=True)
        reward = rim_reward() if recipe.reward == "rim" else rule
        return GKD(model, teacher, tokenizer, recipe.train, reward_fn=reward, teacher_tokenizer=teacher_tokenizer), \
            train, evals, report

    if recipe.recipe == "teacher":
        return _teaching(recipe, model, tokenizer), train, evals, report
    reward = rim_reward() if recipe.reward == "rim" else rule
    return GRPO(model, tokenizer, reward, recipe.train), train, evals, report


def _teaching(recipe: Recipe, teacher, tokenizer):
    """The teaching recipe's trainer: the teacher trained, the student served in-process or over HTTP."""
    from atlas.reward import RIM, HTTPChatClient, RIMConfig
    from atlas.reward.local import LocalChatClient

    config = recipe.train
    if (recipe.student is None) == (recipe.student_endpoint is None):
        raise ValueError("the teacher recipe needs exactly one student: student: <checkpoint> (run in-process) or "
                         "student_endpoint: <OpenAI-compatible base URL> (serving train.student_model)")
    if recipe.student_endpoint is not None:
        client = HTTPChatClient(recipe.student_endpoint)
    else:
        import atlas.model as am

        path = resolve_path(recipe.student, recipe.base_dir)
        student = am.from_pretrained(path, device=ad.device()).requires_grad_(False)
        client = LocalChatClient({config.student_model: (student, am.Tokenizer.from_pretrained(path))})
    judge = None
    if config.reward_mode == "rim":
        judge = RIM(RIMConfig.load(active_judges=("helpfulness", "process")))
    return Teaching(teacher, tokenizer, client, config, judge=judge)


def describe(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as data, a Postgres password in data.source replaced by ***."""
    from atlas.data.postgres import redact_url

    data = dataclasses.asdict(recipe.data)
    data["source"] = redact_url(data["source"]) if data["source"].startswith(("postgresql:", "postgres:")) else \
        data["source"]
    return {k: v for k, v in to_dict(recipe).items() if k != "base_dir"} | {"train": to_dict(recipe.train),
                                                                             "data": data}


def dry_run_report(recipe: Recipe) -> dict[str, Any]:
    """What `run` would do, without loading weights or training: the resolved recipe, the data (sessions
    kept and excluded by reason, examples per split) and one rendered prompt."""
    import atlas.model as am
    from atlas.train.data import prompt_messages

    train, evals, report = load_data(recipe, allow_empty=True)
    tokenizer = am.Tokenizer.from_pretrained(resolve_path(recipe.model, recipe.base_dir),
                                             chat_template=recipe.chat_template)
    notes = []
    for name, split, small in (("train", train, 1), ("eval", evals, 20)):
        if len(split) < small or not split:
            notes.append(f"the {name} split is {'empty' if not split else 'small'} ({len(split)} examples)")
    sample = None
    if train or evals:
        messages = prompt_messages((train or evals)[0])
        if recipe.recipe == "teacher":  # what the teacher is prompted with; the diagnostic comes at run time
            question = [m["content"] for m in messages if m["role"] == "user"][-1]
            messages = [{"role": "user", "content": recipe.train.teacher_prompt.format(
                question=question, diagnostic="<the student's diagnostic>")}]
        sample = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return {"recipe": describe(recipe), "data": report, "sample_prompt": sample, "notes": notes}


def run(recipe: Recipe) -> dict[str, Any]:
    """Train a recipe to its end (or a SIGTERM); returns the data report, the run's summary, the HF path."""
    from atlas.train.metrics import read_metrics

    ad.init()
    ad.setup_logging()
    trainer, train, evals, report = build(recipe)
    out = trainer.train(train, evals)
    summary = summarize(read_metrics(Path(recipe.train.output_dir) / "metrics.jsonl")) if ad.is_main() else {}
    return {"data": report, "summary": summary, "hf": out["hf"], "interrupted": out["interrupted"]}


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


def report_lines(result: dict[str, Any]) -> list[str]:
    """The closing lines the examples and `atlas train` print."""
    s = result["summary"]
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


DATA_KEYS = {f.name for f in dataclasses.fields(DataSpec)}


def expand_overrides(overrides: list[str]) -> list[str]:
    """Command-line shorthands: `traces=SOURCE` is data.source, a data filter (`min_reward=0.8`) is
    data.<key>, a recipe key (`model=...`) stays, anything else (`lr=1e-5`) is train.<key>."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        head = key.split(".")[0]
        if key == "traces":
            out.append("data.source=" + item.split("=", 1)[1])
        elif "." not in key and key in DATA_KEYS:
            out.append(f"data.{item}")
        elif head in _TOP_KEYS:
            out.append(item)
        else:
            out.append(f"train.{item}")
    return out


def execute(recipe: Recipe, dry_run: bool = False) -> int:
    """Run (or with `dry_run` describe) a recipe, printing its closing lines on global rank 0."""
    import json

    try:
        if dry_run:
            print(json.dumps(dry_run_report(recipe), indent=2, default=str))
            return 0
        result = run(recipe)
        if ad.is_main():
            print("\n".join(report_lines(result)))
        return 0
    finally:
        ad.shutdown()


def main(argv: list[str] | None = None, default: str | None = None, flags: dict[str, str] | None = None) -> int:
    """An example's command line: [--config FILE] [--dry-run] [its flags] [key=value ...]; `flags` maps
    its own options (e.g. "--model") to recipe keys (e.g. "model")."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=f"run the {default or ''} recipe".strip())
    ap.add_argument("--config", help=f"a recipe YAML (default: configs/{default}.yaml)" if default else "a recipe YAML")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved recipe and its data, then exit")
    for flag, key in (flags or {}).items():
        ap.add_argument(flag, dest=key.replace(".", "__"), metavar=key.upper().split(".")[-1], help=f"sets {key}")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (lr=1e-5, traces=...)")
    args, extra = ap.parse_known_args(argv)
    if any("=" not in e or e.startswith("-") for e in extra):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides += extra  # key=value after an option
    overrides = [f"{key}={getattr(args, key.replace('.', '__'))}" for key in (flags or {}).values()
                 if getattr(args, key.replace(".", "__")) is not None]
    try:
        recipe = load_recipe(args.config, overrides + expand_overrides(args.overrides), default=default)
        return execute(recipe, args.dry_run)
    except ValueError as e:
        print(f"atlas: error: {e}", file=sys.stderr)
        return 2


def evaluate_checkpoint(checkpoint: str, recipe: Recipe) -> dict[str, Any]:
    """Held-out greedy success rate and mean tokens of a checkpoint on the recipe's eval split (the split
    `atlas train` held out with the same data settings), by the recipe's reward (rule or rim)."""
    import atlas.model as am
    from atlas.reward import answer_match
    from atlas.train.evaluate import greedy_eval

    _, evals, report = load_data(recipe)
    if not evals:
        raise ValueError(f"the eval split of {recipe.data.source!r} is empty with these filters: {report}")
    path = resolve_path(checkpoint, ".")
    ad.init()
    model = am.from_pretrained(path, device=ad.device())
    tokenizer = am.Tokenizer.from_pretrained(path, chat_template=recipe.chat_template)
    reward = rim_reward() if recipe.reward == "rim" else answer_match
    train = recipe.train
    max_new = getattr(train, "eval_max_new_tokens", None) or getattr(train, "max_new_tokens", 256)
    return {"checkpoint": path, **greedy_eval(model, tokenizer, evals, reward, max_new_tokens=max_new)}


_TOP_KEYS = {f.name for f in dataclasses.fields(Recipe)} - {"base_dir"}
