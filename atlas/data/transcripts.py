"""The runtime's step transcripts (`Step.trace`) read back into messages: what the agent did, turn by turn.

The runtime writes the student's messages, system message left out, one `LABEL: content` per message,
joined by newlines; content may span lines, and a line that begins with a label starts a new message:

    HUMAN: <the step's input>                      the user's turn
    AI: <text>                                     an assistant message
    AI: tool_calls=[{"name": ..., "args": {...}, "id": ...}, ...]     an assistant message calling tools
    TOOL: <result>                                 a tool's result, in the order of the calls (no call id)
    AI_REASONING: {"reasoning_content": ...}       reasoning of the preceding AI message (JSON object)

A well-formed transcript is an agent loop: an AI message that calls k tools is followed by exactly k TOOL
results; an AI message without calls is an answer, which only a new HUMAN input (or the end) may follow;
AI_REASONING follows an AI message; the transcript ends with an answer.

How a line that begins with a label is read. A tool's output is text the agent did not write, and may
itself hold a line such as "AI: ..." that the format cannot tell from a message. The pending calls decide:
while results of the last AI message's calls are still owed, such a line inside a tool output is content
(the agent cannot speak, and no new step can start, before its results are in); "TOOL: " starts the next
result. Once no result is owed, an "AI: " / "HUMAN: " / "AI_REASONING: " line inside the last tool output
is read both ways, and the rest of the transcript decides: the reading under which the whole transcript
is well formed is taken ("AI: the answer" after the last result is the answer: read as content, the
transcript would end without one); when both readings are well formed (or neither is), the transcript
is not guessed at. Inside a message the agent or the runtime wrote (AI, HUMAN, AI_REASONING), a label
line always starts a message.

A transcript that cannot be read unambiguously raises `UnreadableTranscript` with one of REASONS:
    empty                           no message at all
    text_before_first_label         the first line is no message
    bad_tool_calls_json             `tool_calls=` is not a JSON list of {"name", "args"[, "id"]} objects
    tool_without_call               a TOOL with no call pending
    missing_tool_result             a message (or the end) while tool results are still owed
    consecutive_answers             an AI message right after an answer (no input or result between)
    no_final_answer                 the transcript ends without an answer
    reasoning_without_message       AI_REASONING that does not follow an AI message
    bad_reasoning_json              AI_REASONING that is not a JSON object with a reasoning text
    ambiguous_label_in_tool_output  a label line in a tool output that both readings accept

Left out: the system message (the runtime does not write it), tool-call ids the runtime did not write.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

__all__ = ["REASONS", "TraceMessage", "UnreadableTranscript", "parse_trace"]

REASONS = ("empty", "text_before_first_label", "bad_tool_calls_json", "tool_without_call", "missing_tool_result",
           "consecutive_answers", "no_final_answer", "reasoning_without_message", "bad_reasoning_json",
           "ambiguous_label_in_tool_output")
_LABEL = re.compile(r"^(HUMAN|AI_REASONING|AI|TOOL): ?(.*)$", re.DOTALL)
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning", "content", "text")


@dataclass
class TraceMessage:
    """One message of a transcript: role "human" | "ai" | "tool"; an AI message's `tool_calls` as
    [{"name", "arguments" (a dict), "id"}] and its `reasoning` (from AI_REASONING)."""

    role: str
    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    reasoning: str | None = None


class UnreadableTranscript(ValueError):
    """A transcript that cannot be read unambiguously; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def parse_trace(trace: str) -> list[TraceMessage]:
    """The messages of a step transcript; see the module docstring for how lines are read."""
    lines = trace.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UnreadableTranscript("empty", "the transcript holds no message")
    if not _LABEL.match(lines[0]):
        raise UnreadableTranscript("text_before_first_label", f"the first line is no message: {lines[0][:80]!r}")
    labels = tuple(m.group(1) if (m := _LABEL.match(line)) else None for line in lines)
    found = _Reading(lines, labels).parses(0, 0, None)
    if found.count == 0:
        raise UnreadableTranscript(found.reason, found.detail)
    if found.count > 1:
        raise UnreadableTranscript("ambiguous_label_in_tool_output", found.detail or "two readings")
    messages: list[TraceMessage] = []
    for m in found.messages:  # reasoning belongs to the AI message before it (`_parses` checked there is one)
        if m.role == "reasoning":
            messages[-1].reasoning = m.reasoning if messages[-1].reasoning is None else \
                messages[-1].reasoning + "\n" + m.reasoning
        else:
            messages.append(m)
    return messages


@dataclass(frozen=True)
class _Found:
    """Parses of the transcript from one point on: how many (capped at 2), the first one's messages, and
    why there is none (the first failure met, preferring the reading that starts a message)."""

    count: int
    messages: tuple[TraceMessage, ...] = ()
    reason: str = ""
    detail: str = ""


class _Reading:
    def __init__(self, lines: list[str], labels: tuple[str | None, ...]):
        self.lines, self.labels = lines, labels
        self.parses = lru_cache(maxsize=None)(self._parses)

    def _parses(self, i: int, pending: int, last: str | None) -> _Found:
        """Every reading of lines[i:], a message starting at line i; `pending` results owed, `last` the kind
        of the message before ("human", "answer", "call", "tool"; reasoning keeps its AI message's)."""
        if i == len(self.lines):
            if pending:
                return _Found(0, reason="missing_tool_result", detail=f"the transcript ends owing {pending} result(s)")
            if last != "answer":
                return _Found(0, reason="no_final_answer", detail="the transcript ends without an answer")
            return _Found(1)
        label = self.labels[i]
        first = _LABEL.match(self.lines[i]).group(2)
        failure = self._refused(label, i, pending, last)
        if failure is not None:
            return failure
        owed = pending - 1 if label == "TOOL" else pending
        ends = [j for j in range(i + 1, len(self.lines) + 1) if self._may_start(j, label, owed)]
        total, result = 0, None
        for j in ends:  # this message runs to line j (where the next one starts, or the end)
            content = "\n".join([first, *self.lines[i + 1:j]])
            try:
                message, after, kind = self._message(label, content, i, owed)
            except _Bad as bad:
                failure = failure or _Found(0, reason=bad.reason, detail=bad.detail)
                break  # the content is bad whatever follows: a longer reading only adds lines to it
            rest = self.parses(j, after, last if label == "AI_REASONING" else kind)
            if rest.count == 0:
                failure = failure or rest
                if not self._must_continue(j, label, owed):
                    break
                continue
            if rest.count > 1:
                return rest  # ambiguous further on: say where
            result = result or (message, rest)
            total += rest.count
            if total > 1:
                return _Found(2, detail=f"the tool output at line {i + 1} holds a label line that reads both as a "
                                        "message and as its content")
            if not self._must_continue(j, label, owed):
                break  # line j has to start a message: no longer reading of this one
        if result is None:
            return failure
        message, rest = result
        return _Found(1, (message, *rest.messages))

    def _refused(self, label: str, i: int, pending: int, last: str | None) -> _Found | None:
        """Why a `label` message cannot start at line i here (None: it can)."""
        where = f"line {i + 1}"
        if label in ("HUMAN", "AI") and pending:
            return _Found(0, reason="missing_tool_result",
                          detail=f"{where}: {label} while {pending} result(s) are owed")
        if label == "AI" and last == "answer":
            return _Found(0, reason="consecutive_answers", detail=f"{where}: an AI message right after an answer")
        if label == "TOOL" and not pending:
            return _Found(0, reason="tool_without_call", detail=f"{where}: a TOOL result with no call pending")
        if label == "AI_REASONING" and last not in ("answer", "call"):
            return _Found(0, reason="reasoning_without_message",
                          detail=f"{where}: AI_REASONING that follows no AI message")
        return None

    def _may_start(self, j: int, label: str, owed: int) -> bool:
        """Whether line j may begin the next message while a `label` message is read (owed: results still
        owed after it); the end of the transcript always may."""
        if j == len(self.lines):
            return True
        nxt = self.labels[j]
        if nxt is None:
            return False
        if label != "TOOL":
            return True  # inside what the agent or the runtime wrote, a label line starts a message
        return nxt == "TOOL" or not owed  # while results are owed only the next result can begin

    def _must_continue(self, j: int, label: str, owed: int) -> bool:
        """Whether a label line j that may start a message may also be content (read both ways)."""
        return j < len(self.lines) and label == "TOOL" and not owed and self.labels[j] != "TOOL"

    def _message(self, label: str, content: str, i: int, owed: int) -> tuple[TraceMessage, int, str]:
        """The message a label and its content make, the results owed after it, and its kind."""
        if label == "HUMAN":
            return TraceMessage("human", content), 0, "human"
        if label == "TOOL":
            return TraceMessage("tool", content), owed, "tool"
        if label == "AI_REASONING":
            return TraceMessage("reasoning", "", reasoning=_reasoning(content, i)), owed, "reasoning"
        if content.startswith("tool_calls="):
            calls = _tool_calls(content.removeprefix("tool_calls="), i)
            return TraceMessage("ai", "", tool_calls=calls), len(calls), "call"
        return TraceMessage("ai", content), 0, "answer"


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail


def _tool_calls(text: str, i: int) -> list[dict[str, Any]]:
    try:
        calls = json.loads(text)
    except json.JSONDecodeError as e:
        raise _Bad("bad_tool_calls_json", f"line {i + 1}: tool_calls is not JSON ({e.msg})") from None
    if not isinstance(calls, list) or not calls:
        raise _Bad("bad_tool_calls_json", f"line {i + 1}: tool_calls must be a non-empty JSON list")
    out = []
    for call in calls:
        args = call.get("args", call.get("arguments", {})) if isinstance(call, dict) else None
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = None
        if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"]
                and isinstance(args, dict)):
            raise _Bad("bad_tool_calls_json", f"line {i + 1}: each call needs a name and an object of args, got "
                                              f"{str(call)[:80]}")
        out.append({"name": call["name"], "arguments": args, "id": call.get("id")})
    return out


def _reasoning(text: str, i: int) -> str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        for key in _REASONING_KEYS:
            if isinstance(value.get(key), str):
                return value[key]
    raise _Bad("bad_reasoning_json", f"line {i + 1}: AI_REASONING must be a JSON object with one of "
                                     f"{_REASONING_KEYS}, got {text[:80]!r}")
