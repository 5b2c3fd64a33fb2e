"""Tools an agent calls, in the ecosystem's conventions (TRL's `tools=` / `environment_factory=`): their JSON
schemas, the calls a model writes, and running them with a timeout.

    schemas = [function_schema(fn) for fn in tools]        # what the chat template shows the model
    calls = parse_tool_calls(text, "hermes")                 # what the model wrote in one turn
    result, reason = run_tool(registry, call, timeout_s)     # a result, or an error message and its reason

Schemas: a tool is a plain Python function with type hints and a Google-style docstring (a description,
then `Args:` with one line per argument), turned into `{"type": "function", "function": {"name",
"description", "parameters": {"type": "object", "properties": {...}, "required": [...]}}}` exactly as
transformers' `get_json_schema` does (int/float/str/bool/None, list/tuple/dict, `X | None` (nullable),
unions, `Literal` and Enum (enum), "(choices: [...])" in an argument's description; a documented return
type becomes "return"; `self`/`cls` of a method is left out). A missing hint or description is a
ValueError naming the function.

Environments (`environment_factory`): a class whose instance is created per rollout (instances are
pooled and reused across steps, as TRL does: construct once, `reset` often), with `reset(**columns)`
returning None or a string appended to the last user message, its public methods other than `reset` and
`get_reward` as tools (listed on the class; no underscore methods), and an optional `get_reward()` scored
once per finished rollout. `environment_tools(instance)` lists them.

Calls, by the template's format (`Tokenizer.tool_call_format`):
- "hermes" (Qwen2.5, Qwen3, the embedded agent): every `<tool_call>{"name": ..., "arguments": {...}}
  </tool_call>` block in the turn;
- "json" (Llama 3.1/3.2): the whole turn is one `{"name": ..., "parameters": {...}}` object (after an
  optional `<|python_tag|>`).
A block that is not a JSON object with a name and object arguments (or a block left open) is the model's
error, `unparseable`, reported in its place; the turn's other calls still run.

Running: each call runs in a daemon thread and is waited for `timeout_s`. A thread cannot be killed, so
a call that outlives its timeout is abandoned: its eventual result is discarded (the model is told it
timed out), and it keeps running until it returns. A process could be killed, but a tool method must run
where its environment is: `get_reward` has to see the state the tools changed, so tools run in this
process. Errors reach the model as a tool message `{"error": ...}` and are counted by reason:
`unknown_tool`, `bad_arguments` (the call does not bind to the signature), `exception` (the tool
raised), `timeout`; `unparseable` comes from parsing.

Left out: async tools, tools that return images, parallel execution of one turn's calls.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import threading
import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["ERRORS", "environment_tools", "function_schema", "parse_tool_calls", "run_tool"]

ERRORS = ("unparseable", "unknown_tool", "bad_arguments", "exception", "timeout")
_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
_BASIC = {**{t: {"type": n} for t, n in _SCALARS.items()}, list: {"type": "array"}, tuple: {"type": "array"},
          dict: {"type": "object"}, Any: {}}
_DESCRIPTION = re.compile(r"^(.*?)[\n\s]*(Args:|Returns:|Raises:|\Z)", re.DOTALL)
_ARGS = re.compile(r"\n\s*Args:\n(.*?)[\n\s]*(Returns:|Raises:|\Z)", re.DOTALL)
_ARG = re.compile(r"(?:^|\n)\s*(\w+)\s*(?:\([^)]*?\))?:\s*(.*?)\s*(?=\n\s*\w+\s*(?:\([^)]*?\))?:|\Z)", re.DOTALL)
_RETURNS = re.compile(r"\n\s*Returns:\n\s*(.*?)[\n\s]*(Raises:|\Z)", re.DOTALL)
_HERMES = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def function_schema(fn: Callable) -> dict[str, Any]:
    """The JSON schema of a typed, Google-docstring'd function (see the module docstring)."""
    name = getattr(fn, "__name__", "operation")
    doc = inspect.getdoc(fn)
    if not doc:
        raise ValueError(f"tool {name!r} has no docstring: a tool needs a description and one line per argument "
                         "under Args: (Google style)")
    description = _DESCRIPTION.search(doc).group(1).strip()
    args_block = _ARGS.search(doc)
    described = {m.group(1): re.sub(r"\s*\n+\s*", " ", m.group(2).strip())
                 for m in _ARG.finditer(args_block.group(1))} if args_block else {}
    signature, hints = inspect.signature(fn), typing.get_type_hints(fn)
    params = list(signature.parameters.values())
    if params and params[0].name in ("self", "cls") and params[0].annotation is inspect.Parameter.empty:
        params = params[1:]
    properties, required = {}, []
    for p in params:
        if p.annotation is inspect.Parameter.empty:
            raise ValueError(f"argument {p.name!r} of tool {name!r} has no type hint")
        if p.name not in described:
            raise ValueError(f"argument {p.name!r} of tool {name!r} has no description in the docstring's Args:")
        schema = _json_type(hints[p.name], name)
        text = described[p.name]
        choices = re.search(r"\(choices:\s*(.*?)\)\s*$", text, flags=re.IGNORECASE)
        if choices:
            schema["enum"] = json.loads(choices.group(1))
            text = text[:choices.start()].strip()
        properties[p.name] = {**schema, "description": text}
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    out: dict[str, Any] = {"name": name, "description": description, "parameters": parameters}
    if "return" in hints:
        try:
            out["return"] = _json_type(hints["return"], name)
        except ValueError:
            pass  # the model never writes the return value: an unconvertible hint is left out, not guessed
        else:
            returns = _RETURNS.search(doc)
            if returns:
                out["return"]["description"] = returns.group(1).strip()
    return {"type": "function", "function": out}


def _json_type(hint: Any, name: str) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is None and isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum([m.value for m in hint])
    if origin is None:
        if hint not in _BASIC:
            raise ValueError(f"tool {name!r}: the type hint {hint!r} has no JSON schema (use int, float, str, bool, "
                             "list, tuple, dict, unions, Literal or an Enum)")
        return dict(_BASIC[hint])
    if origin in (typing.Union, types.UnionType):
        subtypes = [_json_type(t, name) for t in args if t is not type(None)]
        if len(subtypes) == 1:
            out = subtypes[0]
        elif all(s.keys() == {"type"} and isinstance(s["type"], str) for s in subtypes):
            kinds = sorted({s["type"] for s in subtypes})
            out = {"type": kinds[0] if len(kinds) == 1 else kinds}
        else:
            out = {"anyOf": subtypes}
        if type(None) in args:
            out["nullable"] = True
        return out
    if origin is typing.Literal:
        return _enum(list(args))
    if origin is list:
        return {"type": "array", "items": _json_type(args[0], name)} if args else {"type": "array"}
    if origin is tuple:
        return {"type": "array", "prefixItems": [_json_type(t, name) for t in args]} if args else {"type": "array"}
    if origin is dict:
        return {"type": "object", **({"additionalProperties": _json_type(args[1], name)} if len(args) == 2 else {})}
    raise ValueError(f"tool {name!r}: the type hint {hint!r} has no JSON schema")


def _enum(values: list) -> dict[str, Any]:
    kinds = list(dict.fromkeys(_SCALARS[type(v)] for v in values))
    return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": values}


def environment_tools(instance: Any) -> dict[str, Callable]:
    """An environment's tools: its class's public functions other than `reset` and `get_reward`, bound to the
    instance (listed on the class, so properties are not evaluated); ValueError without a `reset`."""
    members = dict(inspect.getmembers(type(instance), predicate=inspect.isfunction))
    if "reset" not in members:
        raise ValueError(f"environment {type(instance).__name__} has no reset(**columns) method: an environment "
                         "must define one (TRL's convention)")
    return {name: getattr(instance, name) for name in members
            if not name.startswith("_") and name not in ("reset", "get_reward")}


def parse_tool_calls(text: str, form: str) -> list[dict[str, Any]]:
    """One turn's calls, in order: `{"name", "arguments"}` for each call read, `{"unparseable": why}` for each
    one that is not (the others still run); [] when the turn makes no call (an answer)."""
    if form == "hermes":
        blocks = _HERMES.findall(text)
        unclosed = text.count("<tool_call>") - len(blocks)
    elif form == "json":
        body = text.removeprefix("<|python_tag|>").strip()
        blocks, unclosed = ([body] if body.startswith("{") else []), 0
    else:
        raise ValueError(f"unknown tool-call format {form!r}: 'hermes' or 'json'")
    calls = [_read_call(block) for block in blocks]
    return calls + [{"unparseable": "a <tool_call> block is not closed"}] * max(unclosed, 0)


def _read_call(block: str) -> dict[str, Any]:
    try:
        call = json.loads(block)
    except json.JSONDecodeError as e:
        return {"unparseable": f"a tool call is not JSON ({e.msg}): {block.strip()[:80]}"}
    arguments = call.get("arguments", call.get("parameters", {})) if isinstance(call, dict) else None
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            arguments = None
    if not (isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(arguments, dict)):
        return {"unparseable": f"a tool call needs a name and an object of arguments: {block.strip()[:80]}"}
    return {"name": call["name"], "arguments": arguments}


def run_tool(tools: dict[str, Callable], call: dict[str, Any], timeout_s: float) -> tuple[str, str | None]:
    """(the result as text, None) or (an error message for the model, its reason); see the module docstring."""
    fn = tools.get(call["name"])
    if fn is None:
        return _error(f"unknown tool {call['name']!r}; the tools are {sorted(tools)}"), "unknown_tool"
    try:
        inspect.signature(fn).bind(**call["arguments"])
    except TypeError as e:
        return _error(f"bad arguments for {call['name']}: {e}"), "bad_arguments"
    box: dict[str, Any] = {}

    def target():
        try:
            box["result"] = fn(**call["arguments"])
        except Exception as e:  # noqa: BLE001 (the model is told what its call raised)
            box["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=target, daemon=True, name=f"tool:{call['name']}")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return _error(f"{call['name']} timed out after {timeout_s:g} s"), "timeout"
    if "error" in box:
        return _error(box["error"]), "exception"
    result = box.get("result")
    return (result if isinstance(result, str) else json.dumps(result, default=str)), None


def _error(message: str) -> str:
    return json.dumps({"error": message})
