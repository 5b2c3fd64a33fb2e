"""Step transcripts as the runtime writes them, read back into messages and conversations: several calls in
one message, multi-line tool output, a tool output holding a line that begins with a label, reasoning,
steps without tools, two steps in a session, every unreadable case counted by reason, schemas given or
inferred, and sessions from JSONL and Postgres alike."""

import json

import pytest

from atlas.data import load_sessions, parse_trace, session_messages, trajectory_examples
from atlas.data.schema import parse_session
from atlas.data.stats import trace_stats
from atlas.data.transcripts import REASONS, UnreadableTranscript
from tests.data.records import make_record, write_jsonl


def calls(*named) -> str:
    return "AI: tool_calls=" + json.dumps([{"name": n, "args": a, "id": i} for n, a, i in named])


SEVERAL = "\n".join([
    'HUMAN: {"step": {"id": 1, "description": "Price the order."}}',
    calls(("lookup", {"sku": "A-1"}, "c1"), ("convert", {"amount": 12.5, "to": "EUR"}, "c2")),
    'AI_REASONING: {"reasoning_content": "I need the price, then the currency."}',
    "TOOL: 12.5 USD",
    "TOOL: 11.40 EUR\nrate: 0.912\nsource: ECB",  # a multi-line result
    "AI: The order costs 11.40 EUR.",
])


def test_several_calls_multiline_output_and_reasoning():
    messages = parse_trace(SEVERAL)
    assert [m.role for m in messages] == ["human", "ai", "tool", "tool", "ai"]
    ai = messages[1]
    assert ai.tool_calls == [{"name": "lookup", "arguments": {"sku": "A-1"}, "id": "c1"},
                             {"name": "convert", "arguments": {"amount": 12.5, "to": "EUR"}, "id": "c2"}]
    assert ai.reasoning == "I need the price, then the currency." and ai.content == ""
    assert messages[3].content == "11.40 EUR\nrate: 0.912\nsource: ECB" and messages[4].content.endswith("EUR.")


def test_a_label_line_inside_tool_output_is_read_by_the_pending_calls():
    # while a result is still owed, "AI: ..." in a tool's output cannot be the agent: it is content
    owed = "\n".join(["HUMAN: go", calls(("search", {}, "a"), ("fetch", {}, "b")),
                      "TOOL: hits:\nAI: a page that quotes a chat log", "TOOL: page", "AI: done"])
    assert [m.content for m in parse_trace(owed) if m.role == "tool"] == ["hits:\nAI: a page that quotes a chat log",
                                                                          "page"]
    # after the last result it could be the answer; here the transcript's real answer follows, and reading
    # the line as a message would make two answers in a row: it is the output's content
    last = "\n".join(["HUMAN: go", calls(("fetch", {}, "a")), "TOOL: log:\nAI: hello there", "AI: done"])
    assert [m.content for m in parse_trace(last)] == ["go", "", "log:\nAI: hello there", "done"]
    # both readings well formed (an answer, then a new input): not guessed, counted
    both = "\n".join(["HUMAN: go", calls(("fetch", {}, "a")), "TOOL: log", "AI: hello", "HUMAN: again", "AI: done"])
    with pytest.raises(UnreadableTranscript) as e:
        parse_trace(both)
    assert e.value.reason == "ambiguous_label_in_tool_output"


UNREADABLE = {
    "text_before_first_label": "the agent says hi\nAI: x",
    "bad_tool_calls_json": "HUMAN: go\nAI: tool_calls=[{\"name\": \"lookup\", ",
    "tool_without_call": "HUMAN: go\nAI: plain\nTOOL: 1",
    "missing_tool_result": "HUMAN: go\n" + calls(("a", {}, "1"), ("b", {}, "2")) + "\nTOOL: 1\nAI: done",
    "consecutive_answers": "HUMAN: go\nAI: one\nAI: two",
    "no_final_answer": "HUMAN: go\n" + calls(("a", {}, "1")) + "\nTOOL: 1",
    "reasoning_without_message": 'HUMAN: go\nAI_REASONING: {"thinking": "hm"}\nAI: done',
    "bad_reasoning_json": "HUMAN: go\nAI: done\nAI_REASONING: not json",
    "ambiguous_label_in_tool_output": "HUMAN: go\n" + calls(("a", {}, "1")) + "\nTOOL: x\nAI: y\nHUMAN: z\nAI: w",
}


@pytest.mark.parametrize("reason", sorted(UNREADABLE))
def test_unreadable_transcripts_fall_back_to_the_answer_and_are_counted_by_reason(reason):
    with pytest.raises(UnreadableTranscript) as e:
        parse_trace(UNREADABLE[reason])
    assert e.value.reason == reason
    good = parse_session(make_record(1, "Price the order.", traces=[SEVERAL]))
    bad = parse_session(make_record(2, "Another task.", traces=[UNREADABLE[reason]]))
    split = trajectory_examples([good, bad], eval_fraction=0.0)
    assert split.counts[f"answer_form:unreadable:{reason}"] == 1 and split.counts["trajectories"] == 1
    fallback = next(e for e in split.train if e.meta["session_id"] == 2)
    assert fallback.messages is None and fallback.completion == "Answer to session 2: 42"


def test_every_reason_is_tested():
    assert set(UNREADABLE) | {"empty"} == set(REASONS)
    with pytest.raises(UnreadableTranscript, match="empty"):
        parse_trace(" \n")


def test_two_steps_become_one_conversation():
    step2 = "HUMAN: {\"step\": {\"id\": 2}}\nAI: Shipping is free."  # a step with no tool use
    session = parse_session(make_record(5, "Price the order and say the shipping.", traces=[SEVERAL, step2]))
    messages = session_messages(session, [{"role": "user", "content": session.task}])
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant", "user", "assistant"]
    # the task and the first step's input are one user turn (templates that alternate turns still render)
    assert messages[0]["content"] == session.task + '\n\n{"step": {"id": 1, "description": "Price the order."}}'
    call = messages[1]["tool_calls"][1]
    assert call == {"id": "c2", "type": "function", "function": {"name": "convert", "arguments": {"amount": 12.5,
                                                                                                   "to": "EUR"}}}
    assert messages[1]["reasoning_content"] == "I need the price, then the currency."
    assert [(m["tool_call_id"], m["name"]) for m in messages[2:4]] == [("c1", "lookup"), ("c2", "convert")]
    assert messages[5] == {"role": "user", "content": '{"step": {"id": 2}}'} and "guidance" not in str(messages)


def test_examples_schemas_and_fallbacks():
    no_tools = parse_session(make_record(3, "Say hi.", traces=["HUMAN: go\nAI: hi"]))
    none = parse_session(make_record(4, "Nothing.", traces=[""]))
    sessions = [parse_session(make_record(1, "Price the order.", traces=[SEVERAL])), no_tools, none]
    split = trajectory_examples(sessions, eval_fraction=0.0)
    assert split.counts["answer_form:no_tool_turns"] == 1 and split.counts["answer_form:no_transcript"] == 1
    trajectory = next(e for e in split.train if e.messages)
    assert trajectory.prompt == trajectory.messages[:-1] and trajectory.completion == "The order costs 11.40 EUR."
    assert split.tools_inferred and trajectory.tools == split.tools
    lookup, convert = split.tools
    assert lookup["function"]["name"] == "lookup" and convert["function"]["parameters"] == {
        "type": "object", "properties": {"amount": {"type": "number"}, "to": {"type": "string"}},
        "required": ["amount", "to"]}


def test_given_schemas_are_used_and_unlisted_calls_counted(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([{"name": "lookup", "description": "Price of a SKU.",
                                 "parameters": {"type": "object", "properties": {"sku": {"type": "string"}}}}]))
    split = trajectory_examples([parse_session(make_record(1, "Price the order.", traces=[SEVERAL]))],
                                tool_schemas=path, eval_fraction=0.0)
    assert not split.tools_inferred and split.tools[0]["function"]["description"] == "Price of a SKU."
    assert split.counts["unlisted_tool:convert"] == 1
    path.write_text("{}")
    with pytest.raises(ValueError, match="JSON list"):
        trajectory_examples([], tool_schemas=path)


@pytest.mark.postgres
def test_jsonl_and_postgres_give_the_same_trajectories(tmp_path, pg_server):
    from tests.data.pgserver import copy_records, create_sdk_schema

    records = [make_record(1, "Price the order.", traces=[SEVERAL, "HUMAN: next\nAI: ok"]),
               make_record(2, "Gated.", review_status="pending", traces=[SEVERAL]),
               make_record(3, "Broken.", traces=[UNREADABLE["tool_without_call"]])]
    url = pg_server.create_database("trajectories")
    create_sdk_schema(url)
    import psycopg

    with psycopg.connect(url) as conn:
        copy_records(conn, records)
    splits = [trajectory_examples(load_sessions(src), eval_fraction=0.0)
              for src in (write_jsonl(tmp_path / "t.jsonl", records), url)]
    assert splits[0].counts == splits[1].counts and splits[0].counts["answer_form:unreadable:tool_without_call"] == 1
    assert [e.messages for e in splits[0].train] == [e.messages for e in splits[1].train]
    assert all(e.meta["session_id"] != 2 for e in splits[0].train)  # review gating unchanged


def test_trace_stats_report_the_transcripts(tmp_path):
    records = [make_record(1, "Price the order.", traces=[SEVERAL, "HUMAN: next\nAI: ok"]),
               make_record(2, "Broken.", traces=[UNREADABLE["bad_tool_calls_json"]]),
               make_record(3, "Plain.", traces=["HUMAN: go\nAI: hi"])]
    t = trace_stats(write_jsonl(tmp_path / "t.jsonl", records)).as_dict()["transcripts"]
    assert t["read"] == 2 and t["tool_names"] == {"lookup": 1, "convert": 1} and t["reasoning_present"] == 1
    assert t["turns_per_session"]["max"] == 3 and t["tool_calls_per_session"]["max"] == 2
    assert t["unreadable_transcripts"] == {"bad_tool_calls_json": 1}
