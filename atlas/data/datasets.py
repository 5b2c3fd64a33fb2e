"""Sessions -> training examples: chat prompts for GRPO, prompt + completion conversations for GKD.

An `Example` carries chat messages (lists of {"role", "content"}), never token ids: the tokenizer's chat
template (atlas.model) turns `Example.prompt` into the prompt ids. That one prompt is what the sampler
generates from *and* what the trainer computes log-probabilities against, so the model is trained on
exactly the context it was sampled from. The prompt is a pure function of the session and the options.

Prompt layout: an optional system message holding `system_prompt` and then the context sections the
recipe asks for (`context=`, in the order given, from CONTEXT_FIELDS: the runtime's learned playbooks,
the plan, the teacher's guidance and notes), then one user message with the task. A requested section a
session lacks is left out and counted ("context_missing:<field>").

Dataset rules:
- duplicates of the same task (compared after collapsing whitespace) collapse to the highest-reward
  session (unscored ranks lowest; ties keep the first seen); collapses are counted;
- the train/eval split is a stable hash (sha256, not Python's salted `hash`) of the task, so it is the
  same across runs and machines, and duplicates of a task can never straddle train and eval;
- GKD needs a completion: sessions with an empty final answer are dropped and counted.
Filter sessions (approved, reward, status) with `load_sessions`; for GKD the recipe's data is
`load_sessions(src, min_reward=0.8, status="succeeded")`.

The agent's transcripts as multi-turn conversations: atlas/data/trajectories.py (`trajectory_examples`),
with the same dataset rules. Left out: tokenization, packing and batching (the trainers' job).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from atlas.data.schema import Session

__all__ = ["CONTEXT_FIELDS", "Example", "ExampleSplit", "build_examples", "build_prompt", "gkd_examples",
           "grpo_examples"]

CONTEXT_FIELDS = ("student_learning", "teacher_learning", "plan", "guidance", "teacher_notes")

_TITLES = {
    "student_learning": "Playbook learned from earlier sessions",
    "teacher_learning": "Teacher playbook learned from earlier sessions",
    "plan": "Plan",
    "guidance": "Teacher guidance",
    "teacher_notes": "Teacher notes",
}


@dataclass
class Example:
    """One training example: the prompt messages, the reference answer (if any), the completion (SFT/GKD);
    a trajectory (atlas.data.trajectories) also carries the whole conversation (`messages`, tool calls and
    results included; `prompt` is then everything before its last assistant turn) and the tool schemas
    its template renders (`tools`)."""

    prompt: list[dict[str, Any]]
    reference: str | None
    completion: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


@dataclass
class ExampleSplit:
    """Deduplicated examples split into train and eval, with the counts of what was collapsed/dropped (and
    for trajectories the tool schemas, given or inferred)."""

    train: list[Example]
    eval: list[Example]
    counts: Counter[str]
    tools: list[dict[str, Any]] | None = None
    tools_inferred: bool = False


def task_key(task: str) -> str:
    """A stable identity for a task: sha256 of its text with whitespace runs collapsed."""
    return hashlib.sha256(" ".join(task.split()).encode("utf-8")).hexdigest()


def split_of(key: str, eval_fraction: float, salt: str = "") -> str:
    """'eval' for a stable `eval_fraction` share of keys, 'train' otherwise; change `salt` to reshuffle."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"


def build_prompt(
    session: Session, context: Sequence[str] = (), system_prompt: str | None = None
) -> tuple[list[dict[str, str]], list[str]]:
    """The chat prompt for `session`, and the requested context fields it lacked."""
    _check_context(context)
    sections, missing = [], []
    if system_prompt:
        sections.append(system_prompt.strip())
    for name in context:
        text = _render(session, name)
        if text:
            sections.append(f"## {_TITLES[name]}\n{text}")
        else:
            missing.append(name)
    messages = [{"role": "system", "content": "\n\n".join(sections)}] if sections else []
    messages.append({"role": "user", "content": session.task})
    return messages, missing


def grpo_examples(
    sessions: Iterable[Session],
    *,
    context: Sequence[str] = (),
    system_prompt: str | None = None,
    eval_fraction: float = 0.1,
    salt: str = "",
) -> ExampleSplit:
    """Prompts to sample from; `reference` is the session's final answer (for accuracy-style rewards)."""
    return build_examples(sessions, lambda session, prompt, answer, counts: Example(prompt, answer), context,
                          system_prompt, eval_fraction, salt)


def gkd_examples(
    sessions: Iterable[Session],
    *,
    context: Sequence[str] = (),
    system_prompt: str | None = None,
    eval_fraction: float = 0.1,
    salt: str = "",
) -> ExampleSplit:
    """Prompt + completion (the final answer) conversations; sessions without an answer are dropped."""
    def make(session, prompt, answer, counts):
        if answer is None:
            counts["dropped:no_final_answer"] += 1
            return None
        return Example(prompt, answer, completion=answer)

    return build_examples(sessions, make, context, system_prompt, eval_fraction, salt)


def build_examples(
    sessions: Iterable[Session],
    make: Callable[[Session, list[dict[str, Any]], str | None, Counter[str]], Example | None],
    context: Sequence[str],
    system_prompt: str | None,
    eval_fraction: float,
    salt: str,
) -> ExampleSplit:
    """The dataset rules of the module docstring around `make(session, prompt, final answer or None,
    counts) -> Example | None` (None: the session is dropped; `make` counts why)."""
    _check_context(context)
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, int | float) or not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be a number in [0, 1), got {eval_fraction!r}")
    counts: Counter[str] = Counter()
    best: dict[str, Example] = {}
    for session in sessions:
        counts["sessions"] += 1
        prompt, missing = build_prompt(session, context, system_prompt)
        example = make(session, prompt, session.final_answer if session.final_answer.strip() else None, counts)
        if example is None:
            continue
        counts.update(f"context_missing:{name}" for name in missing)
        key = task_key(session.task)
        example.meta = {"session_id": session.session_id, "task_key": key, "reward": session.reward,
                        "learning_key": session.learning_key, "execution_mode": session.execution_mode}
        kept = best.get(key)
        if kept is not None:
            counts["duplicates_collapsed"] += 1
            if _rank(example) <= _rank(kept):
                continue
        best[key] = example
    split = ExampleSplit(train=[], eval=[], counts=counts)
    for key, example in best.items():
        example.meta["split"] = split_of(key, eval_fraction, salt)
        (split.eval if example.meta["split"] == "eval" else split.train).append(example)
    counts["train"], counts["eval"] = len(split.train), len(split.eval)
    return split


def _rank(example: Example) -> float:
    reward = example.meta["reward"]
    return -1.0 if reward is None else reward


def _check_context(context: Sequence[str]) -> None:
    unknown = [name for name in context if name not in CONTEXT_FIELDS]
    if isinstance(context, str) or unknown:
        raise ValueError(f"context must be a sequence of names from {CONTEXT_FIELDS}, got {context!r}")


def _render(session: Session, name: str) -> str:
    if name in ("student_learning", "teacher_learning"):
        return (getattr(session, name) or "").strip()
    if name == "plan":
        steps = session.plan.get("steps")
        lines = []
        for i, step in enumerate(steps if isinstance(steps, list) else [], 1):
            if isinstance(step, dict) and isinstance(step.get("description"), str) and step["description"]:
                tool = step.get("tool")
                lines.append(f"{i}. {step['description']}" + (f" (tool: {tool})" if isinstance(tool, str) else ""))
        return "\n".join(lines)
    notes = [n for step in session.steps for n in step.guidance] if name == "guidance" else session.teacher_notes
    return "\n".join(f"- {n.strip()}" for n in notes if n.strip())
