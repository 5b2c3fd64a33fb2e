"""Tools in TRL's conventions: schemas equal transformers' get_json_schema, environments offer their public
methods only, calls are read per template format (each unreadable block in its place), tools run with a
timeout and every failure becomes a message with its reason; a Toolbox refuses what cannot work; the
tool turn appended after a call is the published templates' own."""

import json
import time
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import pytest
from transformers.utils import get_json_schema

import atlas.model as am
from atlas.embedded import model_path
from atlas.train.agent import Toolbox, tool_turn_ids
from atlas.train.tools import environment_tools, function_schema, parse_tool_calls, run_tool
from tests import agent
from tests.tiny import TOOLS_TEMPLATE, build_tokenizer

TEMPLATES = Path(__file__).parents[1] / "templates"


class Unit(Enum):
    C = "celsius"
    F = "fahrenheit"


def weather(city: str, unit: Unit, days: int | None = None, detailed: bool = False) -> dict:
    """Get the weather forecast.

    Args:
        city: The city, e.g.
            "Paris" or "Lyon".
        unit: The temperature unit.
        days: How many days ahead.
        detailed: Hourly values too.

    Returns:
        The forecast by day.
    """
    return {}


def search(query: str, tags: list[str], scores: dict[str, float], mode: Literal["fast", "deep"] = "fast",
           limit: int | float = 10, pair: tuple[int, str] | None = None, anything: Any = None) -> list[str]:
    """Search the documents.

    Args:
        query: What to look for.
        tags: Tags to filter by.
        scores: Minimum score per field.
        mode: How hard to search.
        limit: The most results (choices: [5, 10, 20])
        pair: A key and its name.
        anything: Passed through.
    """
    return []


def no_return_doc(x: float) -> float:
    """Square a number.

    Args:
        x: The number.
    """
    return x * x


@pytest.mark.parametrize("fn", [weather, search, no_return_doc, agent.multiply, agent.Calculator.power])
def test_schemas_equal_transformers_get_json_schema(fn):
    assert function_schema(fn) == get_json_schema(fn)


@pytest.mark.parametrize("source, message", [
    ("def f(x: int):\n    return x", "no docstring"),
    ("def f(x):\n    '''Do.\n\n    Args:\n        x: A thing.\n    '''", "no type hint"),
    ("def f(x: int):\n    '''Do.\n\n    Args:\n        y: A thing.\n    '''", "no description"),
    ("def f(x: set):\n    '''Do.\n\n    Args:\n        x: A thing.\n    '''", "no JSON schema"),
])
def test_an_undocumented_tool_is_a_valueerror_naming_it(source, message):
    scope = {}
    exec(source, scope)
    with pytest.raises(ValueError, match=message):
        function_schema(scope["f"])


def test_an_environment_offers_its_public_methods_except_reset_and_get_reward():
    env = agent.Calculator()
    tools = environment_tools(env)
    assert list(tools) == ["add", "multiply", "power", "subtract"]  # not reset, get_reward, _log
    env.reset(prompt="p")
    assert tools["multiply"](a=3, b=4) == 12 and env.calls == [("multiply", 3, 4)]  # bound to the instance

    class NoReset:
        def act(self, x: int) -> int:
            """Act.

            Args:
                x: A number.
            """
            return x

    with pytest.raises(ValueError, match="no reset"):
        environment_tools(NoReset())


def test_hermes_calls_are_read_in_order_and_an_unreadable_block_is_reported_in_its_place():
    text = ('Let me check. <tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
            '<tool_call>{"name": "b", arguments: {}}</tool_call>'
            '<tool_call>{"name": "c", "arguments": "{\\"y\\": [2]}"}</tool_call>'
            '<tool_call>{"name": "d", "arguments": [1]}</tool_call><tool_call>{"name": "e"')
    calls = parse_tool_calls(text, "hermes")
    assert [c.get("name") for c in calls] == ["a", None, "c", None, None]
    assert calls[0]["arguments"] == {"x": 1} and calls[2]["arguments"] == {"y": [2]}  # arguments as a JSON string
    assert "not JSON" in calls[1]["unparseable"] and "object of arguments" in calls[3]["unparseable"]
    assert "not closed" in calls[4]["unparseable"]
    assert parse_tool_calls("The answer is 4.", "hermes") == []


def test_llama_json_calls():
    assert parse_tool_calls('<|python_tag|>{"name": "f", "parameters": {"x": 2}}', "json") == [
        {"name": "f", "arguments": {"x": 2}}]
    assert parse_tool_calls("{not json", "json")[0]["unparseable"].startswith("a tool call is not JSON")
    assert parse_tool_calls("It is 4.", "json") == []
    with pytest.raises(ValueError, match="unknown tool-call format"):
        parse_tool_calls("x", "xml")


def test_every_failure_of_a_call_is_a_message_and_a_reason():
    tools = {fn.__name__: fn for fn in agent.TOOLS}
    assert run_tool(tools, {"name": "multiply", "arguments": {"a": 3, "b": 4}}, 1.0) == ("12", None)
    message, reason = run_tool(tools, {"name": "add", "arguments": {"a": 1, "b": 2}}, 1.0)
    assert reason == "exception" and json.loads(message) == {"error": "ArithmeticError: add is out of order"}
    message, reason = run_tool(tools, {"name": "power", "arguments": {"a": 1, "b": 2}}, 1.0)
    assert reason == "bad_arguments" and "missing a required argument: 'base'" in json.loads(message)["error"]
    message, reason = run_tool(tools, {"name": "divide", "arguments": {}}, 1.0)
    assert reason == "unknown_tool" and "'divide'" in json.loads(message)["error"]
    start = time.perf_counter()
    message, reason = run_tool(tools, {"name": "subtract", "arguments": {"a": 1, "b": 2}}, 0.2)
    waited = time.perf_counter() - start
    assert reason == "timeout" and "timed out after 0.2 s" in json.loads(message)["error"]
    assert 0.2 <= waited < agent.SLEEP_S / 2  # the step went on; the thread is abandoned


def test_a_toolbox_refuses_what_cannot_work():
    tok = am.Tokenizer.from_pretrained(model_path("student"), chat_template=TOOLS_TEMPLATE)
    with pytest.raises(ValueError, match="needs tools"):
        Toolbox(tok)
    with pytest.raises(ValueError, match="both define"):
        Toolbox(tok, [agent.multiply], agent.Calculator)
    with pytest.raises(ValueError, match="writes no tool call"):
        Toolbox(am.Tokenizer.from_pretrained(model_path("student")), [agent.multiply])
    with pytest.raises(ValueError, match="max_turns"):
        Toolbox(tok, [agent.multiply], max_turns=0)


@pytest.mark.parametrize("template, form, expected", [
    ("qwen2_5.jinja", "hermes",
     '\n<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n<tool_response>\n'
     'sunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n'),
    ("qwen3_training.jinja", "hermes",
     '\n<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n<tool_response>\n'
     'sunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n'),
    ("llama3_1.jinja", "json",
     '<|start_header_id|>ipython<|end_header_id|>\n\n"{\\"temp\\": 21}"<|eot_id|>'
     '<|start_header_id|>ipython<|end_header_id|>\n\n"sunny"<|eot_id|><|start_header_id|>assistant'
     '<|end_header_id|>\n\n'),
])
def test_the_tool_turn_is_what_the_published_template_renders_after_a_call(tmp_path, template, form, expected):
    """What is appended after a call: what follows the assistant's end of turn (the sampled stop token)
    through the next generation prompt, as the published template renders two results (Qwen: one user turn
    of <tool_response> blocks; Llama 3.1: an ipython turn per result)."""
    style = "llama3" if template.startswith("llama") else "chatml"
    directory = build_tokenizer(tmp_path, style, chat_template=(TEMPLATES / template).read_text())
    tok = am.Tokenizer.from_pretrained(directory)
    assert tok.tool_call_format == form
    results = [{"role": "tool", "name": "weather", "content": '{"temp": 21}'},
               {"role": "tool", "name": "weather", "content": "sunny"}]
    ids = tool_turn_ids(tok, results, [function_schema(weather)])
    assert tok.decode(ids, skip_special_tokens=False) == expected


def test_a_template_that_rewrites_the_turn_before_a_tool_result_is_refused(tmp_path):
    """Qwen3's published template drops the empty <think> block of an assistant turn once a tool result follows
    it, so what was sampled would not be a prefix: refused with the fix (its prefix-preserving variant)."""
    tok = am.Tokenizer.from_pretrained(build_tokenizer(tmp_path, "chatml",
                                                       chat_template=(TEMPLATES / "qwen3.jinja").read_text()))
    with pytest.raises(ValueError, match="prefix-preserving variant"):
        Toolbox(tok, [weather])
