"""Recipes: one YAML file says a whole run (model, data, trainer config); `load_recipe` reads it and `build`
makes the trainer and its data. The command line's side (running, dry runs, reports, `atlas eval`) is
atlas/cli.py; examples/*.py write the same build out in plain API calls.

    recipe: grpo                        # sft | grpo | gkd | teacher
    model: embedded:student             # the model trained: a checkpoint directory, a hub id, embedded:<name>
    teacher: null                       # gkd: the teacher checkpoint (the same forms)
    student: null                       # teacher recipe: the frozen student's checkpoint, run in-process, or
    student_endpoint: null              #   an OpenAI-compatible base URL serving train.student_model
    chat_template: null                 # "chatml" or Jinja text, only for a checkpoint without one
    reward: rule                        # grpo's reward, gkd's success test: rule (answer_match) | rim (RIM) |
                                        #   none (grpo with an environment whose get_reward is the reward)
    tools: null                         # grpo: the agent's tools, module:function,... (or file.py:function)
    environment: null                   # grpo: a TRL-style environment class, module:Class (or file.py:Class)
    data:
      source: embedded                  # embedded (the built-in task) | embedded:shop (the agent's task) |
                                        #   traces.jsonl | postgresql://...
      review_status: [approved]         # the trace filters (atlas.data.load_sessions)
      min_reward: null
      status: null
      eval_fraction: 0.1
      eval_limit: 200                   # held-out examples evaluated (null: all)
    train: {...}                        # the trainer's config: SFTConfig / GRPOConfig / GKDConfig fields

Overrides (`key=value`) take shorthands: `traces=SOURCE` is data.source, a data filter (`min_reward=0.8`)
is data.<key>, a recipe key (`model=...`) stays, anything else (`lr=1e-5`) is train.<key>. Paths in a
recipe (`model`, `teacher`, a JSONL `data.source`) resolve relative to the recipe file, never the working
directory; `embedded:<name>` names a checkpoint shipped in the package (atlas/embedded). A relative
`train.output_dir` is relative to the working directory (where results go is the caller's choice).

Data. `embedded`: the built-in addition task (atlas.embedded.task), its own train/eval split, references
for the rule reward, completions for SFT; `embedded:shop`: the embedded agent's task (atlas.embedded.shop:
an item's price, which only the `price` tool knows). A trace source: sessions through `atlas.data.load_sessions`
with the data filters (approved only by default; configs/sft.yaml also asks for `min_reward: 0.8` and
`status: succeeded`), then for SFT and GKD `data.format`: `trajectory` (the default:
`trajectory_examples`, the agent's transcripts as multi-turn tool-call conversations, with
`data.tool_schemas` or schemas inferred from the calls) or `answer` (`gkd_examples`: prompt + final
answer); for GRPO and the teaching recipe `grpo_examples` (prompts, references = final answers); all
deduplicated and split by a stable hash of the task.

Tools. `tools` and `environment` name Python objects as `module:name` (importable, or a module in the
recipe's folder) or `file.py:name` (a file, relative to the recipe); GRPO rolls its trajectories out through them
(atlas.train.agent; the limits are train.max_turns, tool_timeout_s, max_tool_output_tokens), and `atlas
eval` evaluates through them. Only GRPO runs tools live: the other recipes refuse the keys.

Models: the trained model is read in fp32 (its master weights), a frozen one (GKD's teacher) in the
compute dtype, through `atlas.distributed.load_pretrained` (under torchrun sharded as it is read). Every
export carries `provenance.json`: the recipe (a Postgres password redacted), the data and what was kept.

Left out: sweeps, recipe inheritance, remote data other than Postgres.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

import atlas
import atlas.distributed as ad
from atlas.config import check_types, from_dict, merge, parse_overrides, read_yaml, to_dict
from atlas.distill import GKD, SFT, GKDConfig, SFTConfig
from atlas.model.config import DTYPES
from atlas.rl import GRPO, GRPOConfig, TeacherConfig, Teaching

TRAINERS: dict[str, type] = {"sft": SFTConfig, "grpo": GRPOConfig, "gkd": GKDConfig, "teacher": TeacherConfig}
EMBEDDED_TASKS = {"embedded": ("task", "two-digit addition"), "embedded:shop": ("shop", "item prices through a tool")}
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
    format: Literal["trajectory", "answer"] | None = None  # sft/gkd: the agent's transcripts (default) or the answer
    tool_schemas: str | None = None  # trajectories: a JSON file of the agent's tool schemas (default: inferred)

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
    reward: Literal["rule", "rim", "none"] = "rule"
    tools: list[str] | str | None = None  # module:function entries (a string: comma-separated)
    environment: str | None = None  # module:Class
    data: DataSpec = field(default_factory=DataSpec)
    base_dir: str = "."  # where relative paths resolve: the recipe file's folder

    def __post_init__(self) -> None:
        check_types(self)
        if isinstance(self.tools, str):
            self.tools = [t.strip() for t in self.tools.split(",") if t.strip()]
        if (self.tools or self.environment) and self.recipe != "grpo":
            raise ValueError(f"the {self.recipe} recipe runs no tools (only grpo rolls out through tools; sft and gkd "
                             "train on the recorded transcripts): remove tools/environment")
        if self.reward == "none" and not (self.recipe == "grpo" and self.environment):
            raise ValueError("reward: none leaves the environment's get_reward as the only reward: it needs the grpo "
                             "recipe and an environment")

    def path(self, value: str) -> str:
        """A model or data path of this recipe, resolved (`resolve_path`)."""
        return resolve_path(value, self.base_dir)


DATA_KEYS = {f.name for f in dataclasses.fields(DataSpec)}
TOP_KEYS = {f.name for f in dataclasses.fields(Recipe)} - {"base_dir"}


def load_recipe(path: str | Path | None, overrides: list[str] = (), default: str | None = None) -> Recipe:
    """A recipe from YAML (or configs/<default>.yaml) with `key=value` overrides, shorthands included."""
    path = Path(path) if path is not None else CONFIGS / f"{default}.yaml"
    raw = merge(read_yaml(path), parse_overrides(_expand(list(overrides))))
    name = raw.get("recipe")
    if name not in TRAINERS:
        raise ValueError(f"the recipe's 'recipe' key must be one of {sorted(TRAINERS)}, got {name!r}")
    train = from_dict(TRAINERS[name], raw.pop("train", {}) or {}, "train.")
    data = from_dict(DataSpec, raw.pop("data", {}) or {}, "data.")
    return from_dict(Recipe, {**raw, "train": train, "data": data, "base_dir": str(path.resolve().parent)})


def _expand(overrides: list[str]) -> list[str]:
    """The shorthands of the module docstring, spelled out."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key == "traces":
            out.append("data.source=" + item.split("=", 1)[1])
        elif "." not in key and key in DATA_KEYS:
            out.append(f"data.{item}")
        elif key.split(".")[0] in TOP_KEYS:
            out.append(item)
        else:
            out.append(f"train.{item}")
    return out


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


def load_data(recipe: Recipe, allow_empty: bool = False) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """(train examples, eval examples, a report of where they came from and what was excluded); no
    training example is a ValueError unless `allow_empty` (a dry run reports it instead)."""
    spec = recipe.data
    if spec.source.startswith("embedded:") and spec.source not in EMBEDDED_TASKS:
        raise ValueError(f"data.source {spec.source!r} is no embedded task: choose one of {sorted(EMBEDDED_TASKS)}")
    if spec.source in EMBEDDED_TASKS:
        import importlib

        name, what = EMBEDDED_TASKS[spec.source]
        task = importlib.import_module(f"atlas.embedded.{name}")
        train, evals = task.examples("train"), task.examples("eval")
        report = {"source": spec.source, "task": f"{what} (atlas.embedded.{name})"}
    else:
        from atlas.data import gkd_examples, grpo_examples, load_sessions, trajectory_examples

        source = spec.source if spec.source.startswith(("postgresql://", "postgres://")) else recipe.path(spec.source)
        sessions = load_sessions(source, review_status=spec.review_status, min_reward=spec.min_reward,
                                 learning_key=spec.learning_key, status=spec.status, limit=spec.limit,
                                 on_error=spec.on_error)
        form = data_format(recipe)
        if recipe.recipe in ("grpo", "teacher"):
            split = grpo_examples(sessions, eval_fraction=spec.eval_fraction)
        elif form == "trajectory":
            schemas = recipe.path(spec.tool_schemas) if spec.tool_schemas else None
            split = trajectory_examples(sessions, tool_schemas=schemas, eval_fraction=spec.eval_fraction)
        else:
            split = gkd_examples(sessions, eval_fraction=spec.eval_fraction)
        train, evals = split.train, split.eval
        report = {"sessions": sessions.as_dict(), "format": form, "examples": dict(split.counts)}
        if split.tools is not None:
            given = "inferred from the calls" if split.tools_inferred else spec.tool_schemas
            report["tool_schemas"] = {"source": given, "tools": split.tools}
    if spec.eval_limit is not None:
        evals = evals[:spec.eval_limit]
    report.update(train_examples=len(train), eval_examples=len(evals))
    if not train and not allow_empty:
        raise ValueError(f"no training examples from {spec.source!r} (with these filters): {report}")
    return train, evals, report


def data_format(recipe: Recipe) -> str:
    """What a trace source becomes: "trajectory" (the agent's transcripts: SFT's and GKD's default) or
    "answer" (task -> final answer); GRPO and the teaching recipe take prompts, and sample their own."""
    form = recipe.data.format or ("trajectory" if recipe.recipe in ("sft", "gkd") else "answer")
    if form == "trajectory" and recipe.recipe not in ("sft", "gkd"):
        raise ValueError(f"data.format: trajectory is for the sft and gkd recipes; the {recipe.recipe} recipe "
                         "samples from the task (set data.format: answer, or leave it unset)")
    return form


def load_model(recipe: Recipe, name: str, frozen: bool = False):
    """(model, tokenizer) of a recipe's checkpoint: trained ones in fp32 (their master weights) computing in
    `train.param_dtype`, frozen ones held in that compute dtype (see the module docstring)."""
    import atlas.model as am

    path = recipe.path(name)
    compute = DTYPES.get(recipe.train.param_dtype)
    model = ad.load_pretrained(path, dtype=(compute or torch.float32) if frozen else torch.float32,
                               param_dtype=None if frozen else compute)
    return model, am.Tokenizer.from_pretrained(path, chat_template=recipe.chat_template)


def load_object(spec: str, base_dir: str) -> Any:
    """The object a recipe names: `module:name` (importable, or a module in the recipe's folder) or
    `path/file.py:name` (relative to the recipe)."""
    import importlib
    import importlib.util

    where, sep, name = spec.rpartition(":")
    if not (sep and where and name):
        raise ValueError(f"{spec!r} names no object: write module:name or file.py:name")
    try:
        if where.endswith(".py"):
            path = Path(resolve_path(where, base_dir))
            loader = importlib.util.spec_from_file_location(path.stem, path)
            if not path.is_file() or loader is None:
                raise FileNotFoundError(f"no file {path}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:  # importable, or a module in the recipe's folder
            sys.path.insert(0, base_dir)
            try:
                module = importlib.import_module(where)
            finally:
                sys.path.remove(base_dir)
        return getattr(module, name)
    except (ImportError, FileNotFoundError, AttributeError) as e:
        raise ValueError(f"cannot load {spec!r}: {type(e).__name__}: {e}") from e


def agent_tools(recipe: Recipe) -> dict[str, Any]:
    """GRPO's `tools` / `environment_factory` keywords for a recipe ({} without tools)."""
    out: dict[str, Any] = {}
    if recipe.tools:
        out["tools"] = [load_object(spec, recipe.base_dir) for spec in recipe.tools]
    if recipe.environment:
        out["environment_factory"] = load_object(recipe.environment, recipe.base_dir)
    return out


def reward_fns(recipe: Recipe) -> list[Any]:
    """The recipe's reward functions (an environment's get_reward joins them in GRPO)."""
    from atlas.reward import answer_match, judge_reward

    if recipe.reward == "rim":
        return [judge_reward()]
    return [answer_match] if recipe.reward == "rule" else []


def build(recipe: Recipe):
    """The trainer of a recipe, with its data: (trainer, train examples, eval examples, data report)."""
    from atlas.reward import answer_match

    ad.init()
    train, evals, report = load_data(recipe)
    model, tokenizer = load_model(recipe, recipe.model)
    rewards = reward_fns(recipe)
    if recipe.recipe == "sft":
        trainer = SFT(model, tokenizer, recipe.train, reward_fn=answer_match)
    elif recipe.recipe == "gkd":
        if recipe.teacher is None:
            raise ValueError("the gkd recipe needs a teacher: set teacher: <checkpoint> (or --teacher)")
        teacher, teacher_tokenizer = load_model(recipe, recipe.teacher, frozen=True)
        trainer = GKD(model, teacher, tokenizer, recipe.train, reward_fn=rewards[0],
                      teacher_tokenizer=teacher_tokenizer)
    elif recipe.recipe == "teacher":
        trainer = _teaching(recipe, model, tokenizer)
    else:
        trainer = GRPO(model, tokenizer, rewards, recipe.train, **agent_tools(recipe))
    trainer.provenance = provenance(recipe, train, evals, report)
    return trainer, train, evals, report


def _teaching(recipe: Recipe, teacher, tokenizer) -> Teaching:
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

        path = recipe.path(recipe.student)
        student = am.from_pretrained(path, device=ad.device()).requires_grad_(False)
        client = LocalChatClient({config.student_model: (student, am.Tokenizer.from_pretrained(path))})
    judge = RIM(RIMConfig.load(active_judges=("helpfulness", "process"))) if config.reward_mode == "rim" else None
    return Teaching(teacher, tokenizer, client, config, judge=judge)


def describe(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as data, a Postgres password in data.source replaced by ***."""
    from atlas.data.postgres import redact_url

    data = dataclasses.asdict(recipe.data)
    if data["source"].startswith(("postgresql:", "postgres:")):
        data["source"] = redact_url(data["source"])
    return {k: v for k, v in to_dict(recipe).items() if k != "base_dir"} | {"train": to_dict(recipe.train),
                                                                             "data": data}


def provenance(recipe: Recipe, train: list[Any], evals: list[Any], report: dict[str, Any]) -> dict[str, Any]:
    """What a deployed checkpoint was trained from: the recipe (credentials redacted), the data source,
    its filters, the sessions kept and excluded, a digest of the session ids, atlas's version."""
    ids = sorted(str(e.meta["session_id"]) for e in [*train, *evals]
                 if getattr(e, "meta", None) and e.meta.get("session_id") is not None)
    return {"atlas_version": atlas.__version__, "recipe": describe(recipe), "data": report,
            "session_ids": {"count": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}}
