"""`atlas traces stats`: what is in a trace source, before training on it.

Counts by review status, status and execution mode; the session-reward distribution (quantiles and a
10-bin histogram over [0, 1]); lengths (characters of task, final answer and step traces; steps per
session); escalated rewards; the share of sessions the default gating (approved only) would exclude; and
the agent's transcripts read as conversations (atlas.data.trajectories): assistant turns and tool calls
per session, the tools called and how often, sessions with reasoning, and the transcripts that cannot be
read, by reason (`TranscriptStats`, which `atlas train --dry-run` reports for what it would train too).
By default every session is read (`review_status=None`) so the review counts are complete; the
command's filters narrow what is described, and what they excluded is reported by reason.

Left out: token counts (they depend on the model's tokenizer; atlas.model has it).
"""

from __future__ import annotations

import os
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from atlas.data.schema import Session
from atlas.data.traces import Sessions, load_sessions
from atlas.data.trajectories import session_messages
from atlas.data.transcripts import UnreadableTranscript

__all__ = ["TraceStats", "TranscriptStats", "trace_stats"]

_LENGTHS = ("task_chars", "final_answer_chars", "trace_chars", "steps")


@dataclass
class TranscriptStats:
    """What the agent's transcripts hold, over conversations (`add`) and the ones that could not be read."""

    turns: array = field(default_factory=lambda: array("q"))
    tool_calls: array = field(default_factory=lambda: array("q"))
    tools: Counter[str] = field(default_factory=Counter)
    reasoning: int = 0
    unreadable: Counter[str] = field(default_factory=Counter)

    def add(self, messages: list[dict[str, Any]]) -> None:
        assistant = [m for m in messages if m["role"] == "assistant"]
        calls = [c["function"]["name"] for m in assistant for c in m.get("tool_calls", [])]
        self.turns.append(len(assistant))
        self.tool_calls.append(len(calls))
        self.tools.update(calls)
        self.reasoning += any("reasoning_content" in m for m in assistant)

    def read(self, session: Session) -> None:
        """Add a session's transcripts, or count why they cannot be read."""
        if not any(step.trace.strip() for step in session.steps):
            self.unreadable["no_transcript"] += 1
            return
        try:
            self.add(session_messages(session, [{"role": "user", "content": session.task}]))
        except UnreadableTranscript as e:
            self.unreadable[e.reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"read": len(self.turns), "turns_per_session": _summary(sorted(self.turns)),
                "tool_calls_per_session": _summary(sorted(self.tool_calls)),
                "tool_names": dict(self.tools.most_common()), "reasoning_present": self.reasoning,
                "unreadable_transcripts": dict(self.unreadable.most_common())}


@dataclass
class TraceStats:
    """Aggregates over the sessions one `load_sessions` pass yielded (`load` says what it excluded)."""

    load: Sessions
    sessions: int = 0
    review_status: Counter[str] = field(default_factory=Counter)
    status: Counter[str] = field(default_factory=Counter)
    execution_mode: Counter[str] = field(default_factory=Counter)
    escalated: int = 0
    rewards: array = field(default_factory=lambda: array("d"))
    lengths: dict[str, array] = field(default_factory=lambda: {k: array("q") for k in _LENGTHS})
    transcripts: TranscriptStats = field(default_factory=TranscriptStats)

    @property
    def not_approved(self) -> int:
        """Sessions here that the default gating (review_status="approved") would exclude."""
        return self.sessions - self.review_status["approved"]

    def as_dict(self) -> dict[str, Any]:
        rewards = sorted(self.rewards)
        histogram = [0] * 10
        for r in rewards:
            histogram[min(int(r * 10), 9)] += 1
        return {
            "source": self.load.source,
            "sessions": self.sessions,
            "review_status": dict(self.review_status.most_common()),
            "status": dict(self.status.most_common()),
            "execution_mode": dict(self.execution_mode.most_common()),
            "default_gating_excludes": {
                "sessions": self.not_approved,
                "share": self.not_approved / self.sessions if self.sessions else 0.0,
            },
            "reward": {**_summary(rewards), "unscored": self.sessions - len(rewards), "histogram": histogram},
            "escalated": self.escalated,
            "lengths": {k: _summary(sorted(v)) for k, v in self.lengths.items()},
            "transcripts": self.transcripts.as_dict(),
            "load": self.load.as_dict(),
        }

    def to_text(self) -> str:
        d = self.as_dict()
        out = [f"source: {d['source']}", f"sessions: {d['sessions']}"]
        for name in ("review_status", "status", "execution_mode"):
            out.append(f"{name}: " + (", ".join(f"{k} {v}" for k, v in d[name].items()) or "-"))
        gate = d["default_gating_excludes"]
        out.append(f"default gating (approved only) excludes: {gate['sessions']} ({gate['share']:.1%})")
        r = d["reward"]
        out.append(f"reward: {_fmt(r)}; unscored {r['unscored']}; escalated {d['escalated']}")
        peak = max(r["histogram"]) or 1
        for i, n in enumerate(r["histogram"]):
            bracket = "]" if i == 9 else ")"
            out.append(f"  [{i / 10:.1f}, {(i + 1) / 10:.1f}{bracket} {n:>8} {'#' * round(30 * n / peak)}".rstrip())
        out.append("lengths:")
        out.extend(f"  {k}: {_fmt(v)}" for k, v in d["lengths"].items())
        t = d["transcripts"]
        out.append(f"transcripts read as conversations: {t['read']}; with reasoning {t['reasoning_present']}")
        out.append(f"  assistant turns per session: {_fmt(t['turns_per_session'])}")
        out.append(f"  tool calls per session: {_fmt(t['tool_calls_per_session'])}")
        out.append("  tools called: " + (", ".join(f"{k} {v}" for k, v in t["tool_names"].items()) or "none"))
        out.append("  unreadable: " + (", ".join(f"{k} {v}" for k, v in t["unreadable_transcripts"].items())
                                       or "none"))
        load = d["load"]
        excluded = ", ".join(f"{k} {v}" for k, v in load["excluded"].items()) or "none"
        out.append(f"excluded by the filters: {excluded}")
        out.extend(f"  {e}" for e in load["errors"])
        if load["limit_reached"]:
            out.append("(stopped at --limit: figures cover the first sessions only)")
        return "\n".join(out)


def trace_stats(
    source: str | os.PathLike[str], review_status: str | Sequence[str] | None = None, **options: Any
) -> TraceStats:
    """Read `source` once through `load_sessions` (ungated unless `review_status` is given; `options` are
    its other arguments: min_reward, status, limit, on_error, ...) and aggregate."""
    with load_sessions(source, review_status=review_status, **options) as sessions:
        stats = TraceStats(load=sessions)
        for s in sessions:
            stats.sessions += 1
            stats.review_status[s.review_status or "missing"] += 1
            stats.status[s.status or "missing"] += 1
            stats.execution_mode[s.execution_mode or "missing"] += 1
            stats.escalated += s.escalated
            if s.reward is not None:
                stats.rewards.append(s.reward)
            stats.lengths["task_chars"].append(len(s.task))
            stats.lengths["final_answer_chars"].append(len(s.final_answer))
            stats.lengths["trace_chars"].append(sum(len(step.trace) for step in s.steps))
            stats.lengths["steps"].append(len(s.steps))
            stats.transcripts.read(s)
    return stats


def _summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean and nearest-rank quantiles of already sorted values."""
    n = len(values)
    if not n:
        return {"count": 0, "mean": None, "min": None, "p10": None, "p50": None, "p90": None, "max": None}
    q = {f"p{p}": values[min(n - 1, max(0, -(-p * n // 100) - 1))] for p in (10, 50, 90)}
    return {"count": n, "mean": sum(values) / n, "min": values[0], **q, "max": values[-1]}


def _fmt(s: dict[str, Any]) -> str:
    if not s["count"]:
        return "none"
    return "mean {mean:.3g}, min {min:.3g}, p10 {p10:.3g}, p50 {p50:.3g}, p90 {p90:.3g}, max {max:.3g}".format(**s)
