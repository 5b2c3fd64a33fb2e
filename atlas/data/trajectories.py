"""Sessions -> the agent's work as chat messages: each step's transcript (atlas.data.transcripts) as user,
assistant (tool calls included) and tool turns, the training data of SFT and GKD on what the agent did.

    messages = session_messages(session, context=(), system_prompt=None)   # raises UnreadableTranscript
    split = trajectory_examples(sessions, tool_schemas=None)                 # ExampleSplit, fallbacks counted
    schemas = infer_tool_schemas(conversations)                              # without a schemas file

A session's messages, in the OpenAI/transformers message form every chat template reads:
- the prompt of `build_prompt`: an optional system message (`system_prompt` and the requested context
  sections), then one user turn holding the session's task, a blank line and the first step's HUMAN input
  (one message, so templates that require turns to alternate still render);
- for every step in order: its HUMAN input as a user turn (the first step's merged as above); each AI
  message as an assistant turn, `{"role": "assistant", "content", "tool_calls": [{"id", "type":
  "function", "function": {"name", "arguments": {...}}}], "reasoning_content"}` (arguments an object, as
  transformers passes them); each TOOL result as `{"role": "tool", "tool_call_id", "name", "content"}`
  answering the call in its order (a call the runtime wrote without an id gets `call_<step>_<k>`);
- the step's guidance and the teacher's validation stay out: the student did not write them (a recipe can
  add guidance as context, as for prompts). Whether the template renders reasoning is the tokenizer's
  business (atlas.train.data drops it there, counted, where it does not).

Examples (`trajectory_examples`): a trajectory is an `Example` whose `messages` is the conversation and
`tools` the schemas; its `prompt` is everything before the last assistant turn (the context of the final
answer, which held-out evaluation asks for) and `completion` that turn. A session falls back to the
answer form (prompt + final answer, as `gkd_examples`), counted by reason, when a transcript cannot be
read (`answer_form:unreadable:<reason>`), when it has none (`answer_form:no_transcript`), or when it has
no assistant turn beyond the final answer (`answer_form:no_tool_turns`: nothing more to learn from it).

Tool schemas: the definitions the agent saw, as a JSON file of OpenAI function schemas (`tool_schemas`);
without one they are inferred from the calls in the data (`infer_tool_schemas`: each tool's argument
names, the JSON types of the values observed, an argument every call passes is required) and marked as
inferred. A call to a tool the given schemas do not list is counted (`unlisted_tool:<name>`).

Left out: multimodal content, parallel-tool-call flags, the system prompt the runtime gave the agent
(it is not in the transcript; pass it as `system_prompt`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from atlas.data.datasets import Example, ExampleSplit, build_examples
from atlas.data.schema import Session
from atlas.data.transcripts import UnreadableTranscript, parse_trace

__all__ = ["infer_tool_schemas", "load_tool_schemas", "session_messages", "trajectory_examples"]

_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
               (dict, "object"), (type(None), "null"))


def session_messages(session: Session, prompt: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`prompt` (system and user turn of `build_prompt`) followed by every step's transcript as turns;
    raises UnreadableTranscript (the first step that cannot be read)."""
    messages = [dict(m) for m in prompt]
    for s, step in enumerate(session.steps):
        pending: list[dict[str, Any]] = []  # this step's calls still waiting for their result
        for m in parse_trace(step.trace):
            if m.role == "human":
                if s == 0 and messages[-1]["role"] == "user" and len(messages) == len(prompt):
                    messages[-1]["content"] += "\n\n" + m.content
                else:
                    messages.append({"role": "user", "content": m.content})
            elif m.role == "tool":
                call = pending.pop(0)
                messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                                 "content": m.content})
            else:
                turn: dict[str, Any] = {"role": "assistant", "content": m.content}
                if m.tool_calls:
                    turn["tool_calls"] = [{"id": c["id"] or f"call_{s}_{k}", "type": "function",
                                           "function": {"name": c["name"], "arguments": c["arguments"]}}
                                          for k, c in enumerate(m.tool_calls)]
                    pending = list(turn["tool_calls"])
                if m.reasoning is not None:
                    turn["reasoning_content"] = m.reasoning
                messages.append(turn)
    return messages


def trajectory_examples(
    sessions: Iterable[Session],
    *,
    tool_schemas: list[dict[str, Any]] | str | Path | None = None,
    context: Sequence[str] = (),
    system_prompt: str | None = None,
    eval_fraction: float = 0.1,
    salt: str = "",
) -> ExampleSplit:
    """Trajectory examples (the module docstring), deduplicated and split as `gkd_examples`'; the split's
    counts hold the fallbacks by reason, `split.tools` the schemas and `split.tools_inferred` whether
    they were inferred."""
    given = load_tool_schemas(tool_schemas) if isinstance(tool_schemas, str | Path) else tool_schemas

    def make(session: Session, prompt, answer, counts: Counter[str]) -> Example | None:
        if not any(step.trace.strip() for step in session.steps):
            counts["answer_form:no_transcript"] += 1
            return _answer_form(prompt, answer, counts)
        try:
            messages = session_messages(session, prompt)
        except UnreadableTranscript as e:
            counts[f"answer_form:unreadable:{e.reason}"] += 1
            return _answer_form(prompt, answer, counts)
        turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
        if len(turns) == 1 and "tool_calls" not in messages[turns[0]]:
            counts["answer_form:no_tool_turns"] += 1
            return _answer_form(prompt, answer, counts)
        counts["trajectories"] += 1
        return Example(prompt=messages[:turns[-1]], reference=answer, completion=messages[turns[-1]]["content"],
                       messages=messages)

    split = build_examples(sessions, make, context, system_prompt, eval_fraction, salt)
    conversations = [e.messages for e in split.train + split.eval if e.messages]
    split.tools_inferred = given is None
    split.tools = infer_tool_schemas(conversations) if given is None else given
    listed = {t["function"]["name"] for t in split.tools}
    for messages in conversations:
        for m in messages:
            for call in m.get("tool_calls", []):
                if call["function"]["name"] not in listed:
                    split.counts[f"unlisted_tool:{call['function']['name']}"] += 1
    for e in split.train + split.eval:
        if e.messages:
            e.tools = split.tools
    return split


def _answer_form(prompt, answer, counts: Counter[str]) -> Example | None:
    if answer is None:
        counts["dropped:no_final_answer"] += 1
        return None
    return Example(prompt=prompt, reference=answer, completion=answer)


def infer_tool_schemas(conversations: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Function schemas from the calls in `conversations`: per tool (in the order first called) each argument
    with the JSON types of the values it was given, required when every call gave it."""
    calls: dict[str, list[dict[str, Any]]] = {}
    for messages in conversations:
        for m in messages:
            for call in m.get("tool_calls", []):
                calls.setdefault(call["function"]["name"], []).append(call["function"]["arguments"])
    out = []
    for name, args in calls.items():
        properties: dict[str, dict[str, Any]] = {}
        for a in args:
            for key, value in a.items():
                types = properties.setdefault(key, {"types": []})["types"]
                kind = next(t for cls, t in _JSON_TYPES if isinstance(value, cls))
                if kind not in types:
                    types.append(kind)
        properties = {k: {"type": v["types"][0] if len(v["types"]) == 1 else v["types"]}
                      for k, v in properties.items()}
        required = [k for k in properties if all(k in a for a in args)]
        out.append({"type": "function", "function": {
            "name": name, "description": f"(inferred from {len(args)} recorded call(s))",
            "parameters": {"type": "object", "properties": properties, "required": required}}})
    return out


def load_tool_schemas(path: str | Path) -> list[dict[str, Any]]:
    """A JSON file of function schemas (`{"type": "function", "function": {...}}`, or the bare function
    objects) as the OpenAI form the chat templates read."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"tool_schemas {str(path)!r} is not a readable JSON file: {e}") from None
    if not isinstance(data, list):
        raise ValueError(f"tool_schemas {str(path)!r} must hold a JSON list of function schemas")
    out = []
    for item in data:
        function = item.get("function", item) if isinstance(item, dict) else None
        if not (isinstance(function, dict) and isinstance(function.get("name"), str)):
            raise ValueError(f"tool_schemas {str(path)!r}: each entry needs a function name, got {str(item)[:80]}")
        out.append({"type": "function", "function": function})
    names = [t["function"]["name"] for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"tool_schemas {str(path)!r} lists a tool twice: {names}")
    return out
