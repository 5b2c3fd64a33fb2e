"""Agent rollouts (atlas.train.agent) with the taught tiny agent of tests/agent.py: every failure of a call
reaches the model as a message and is counted by reason; the recorded sequence is exactly what was sampled
and appended, the mask exactly the sampled tokens, and the sampler's log-probabilities are a full forward's;
limits (turns, tokens, tool output) end or cut trajectories, counted; a TRL-style environment runs as is."""

import collections
import copy
import json

import pytest
import torch

import atlas.model as am
from atlas.sampler import Conversation, SamplingParams
from atlas.train.agent import Toolbox, agent_rollouts, tool_turn_ids
from atlas.train.tools import ERRORS
from tests import agent

PARAMS = SamplingParams(max_new_tokens=128, temperature=1.0, n=4)


@pytest.fixture(scope="module")
def taught(taught_agent):
    return am.from_pretrained(taught_agent), am.Tokenizer.from_pretrained(taught_agent)


def _recorded(monkeypatch):
    """Spy on every conversation: per row, in order, the tokens each turn sampled and each extend appended."""
    log = []
    real_turn, real_extend = Conversation.turn, Conversation.extend

    def turn(self, budgets):
        out = real_turn(self, budgets)
        if not hasattr(self, "spy_rows"):
            self.spy_rows = list(range(len(out)))  # live row -> trajectory number
            self.spy = [[] for _ in out]
            log.append(self.spy)
        for b, c in enumerate(out):
            self.spy[self.spy_rows[b]].append(("sampled", c.token_ids))
        return out

    def extend(self, appended):
        for b in sorted(appended):
            self.spy[self.spy_rows[b]].append(("appended", appended[b]))
        self.spy_rows = [self.spy_rows[b] for b in sorted(appended)]
        return real_extend(self, appended)

    monkeypatch.setattr(Conversation, "turn", turn)
    monkeypatch.setattr(Conversation, "extend", extend)
    return log


def test_every_failure_reaches_the_model_and_is_counted_by_reason(taught, monkeypatch):
    model, tok = taught
    log = _recorded(monkeypatch)
    box = Toolbox(tok, agent.TOOLS, timeout_s=0.2)
    batch = agent_rollouts(model, tok, agent.problems(16), PARAMS, (7, 1), box)
    counts = collections.Counter()
    for r in batch.rollouts:
        counts.update(r.tool_errors)
    assert set(counts) == {"exception", "timeout", "bad_arguments", "unknown_tool", "unparseable"}, counts
    (spy,) = log
    seen = collections.Counter()
    for r, pieces in zip(batch.rollouts, spy):
        tool_messages = [m for m in r.messages if m["role"] == "tool"]
        assert len(tool_messages) == r.tool_calls
        errors = [json.loads(m["content"])["error"] for m in tool_messages if m["content"].startswith('{"error"')]
        assert len(errors) == sum(r.tool_errors.values())
        appended = [tok.decode(ids, skip_special_tokens=False) for kind, ids in pieces if kind == "appended"]
        for m in tool_messages:  # the result the model read next, in its context
            assert any(m["content"] in text for text in appended), (m, appended)
        for e in errors:
            seen.update(k for k, cue in (("exception", "ArithmeticError"), ("timeout", "timed out"),
                                         ("bad_arguments", "bad arguments"), ("unknown_tool", "unknown tool"),
                                         ("unparseable", "could not be read")) if cue in e)
    assert seen == counts  # each reason's message is the one the model was shown
    worked = agent.tool_worked(batch.prompts, batch.completions, **batch.columns)
    assert 0 < sum(worked) < len(worked)  # some calls worked: the known value came back (multiply)
    assert any(m["content"] == str(m_args["a"] * m_args["b"]) for r in batch.rollouts
               for m, m_args in _results_with_arguments(r.messages, "multiply"))


def _results_with_arguments(messages, name):
    calls = {c["id"]: c["function"]["arguments"] for m in messages if m["role"] == "assistant"
             for c in m.get("tool_calls", []) if c["function"]["name"] == name}
    return [(m, calls[m["tool_call_id"]]) for m in messages if m["role"] == "tool" and m["tool_call_id"] in calls]


def test_the_sequence_is_what_was_sampled_and_appended_and_the_mask_the_sampled(taught, monkeypatch):
    model, tok = taught
    log = _recorded(monkeypatch)
    box = Toolbox(tok, agent.TOOLS, timeout_s=0.05)
    batch = agent_rollouts(model, tok, agent.problems(8), PARAMS, (3, 2), box)
    (spy,) = log
    multi = 0
    for r, pieces in zip(batch.rollouts, spy):
        expected, mask = list(r.prompt_ids), [0] * len(r.prompt_ids)
        for kind, ids in pieces:
            expected += ids
            mask += [int(kind == "sampled")] * len(ids)
        assert r.sequence == expected
        assert [0] * len(r.prompt_ids) + r.mask == mask
        assert r.turns == sum(kind == "sampled" for kind, _ in pieces)
        multi += r.turns > 1
        # what was appended is the template's tool turn for the results recorded
        tool_turns = [ids for kind, ids in pieces if kind == "appended"]
        results = [m for m in r.messages if m["role"] == "tool"]
        if tool_turns:
            assert tool_turns[0] == tool_turn_ids(tok, results[:1], box.schemas)
    assert multi >= len(batch.rollouts) // 2


def test_the_samplers_logprobs_are_a_full_forwards_on_multi_turn_sequences(taught):
    """The conversation decodes on one cache with holes (rows that stopped while others went on) and
    prefills tool turns into it: each sampled token's log-probability equals, to fp32 rounding, a float64
    forward of the whole recorded sequence (GRPO's logprob_gap against its own fp32 pass: tests/rl)."""
    model, tok = taught
    box = Toolbox(tok, agent.TOOLS, timeout_s=0.05)
    batch = agent_rollouts(model, tok, agent.problems(4), PARAMS, (5, 1), box)
    reference = copy.deepcopy(model).double()
    worst, checked = 0.0, 0
    for r in batch.rollouts:
        with torch.no_grad():
            logp = reference(torch.tensor([r.sequence]))[0].log_softmax(-1)
        P = len(r.prompt_ids)
        for j, (token, m) in enumerate(zip(r.completion_ids, r.mask)):
            if m:
                worst = max(worst, abs(logp[P + j - 1, token].item() - r.logprobs[j]))
                checked += 1
            else:
                assert r.logprobs[j] == 0.0
    assert checked > 100 and worst <= 5e-5, worst  # fp32 rounding; a wrong position or mask costs > 0.1
    assert sum(r.turns > 1 for r in batch.rollouts) >= 4


def test_limits_end_trajectories_and_are_counted(taught):
    model, tok = taught
    examples = agent.problems(4)
    # one turn: the call is made (and runs: an environment sees it) but nothing is appended to answer from
    batch = agent_rollouts(model, tok, examples, PARAMS, (1, 1), Toolbox(tok, agent.TOOLS, max_turns=1,
                                                                          timeout_s=0.05))
    assert all(r.turns == 1 and r.mask == [1] * len(r.completion_ids) for r in batch.rollouts)
    assert all(r.truncated == (r.tool_calls > 0) for r in batch.rollouts) and any(r.tool_calls for r in batch.rollouts)
    # a token budget shorter than a call: the first turn is cut ("length"), nothing runs
    short = SamplingParams(max_new_tokens=30, temperature=1.0, n=4)
    batch = agent_rollouts(model, tok, examples, short, (1, 1), Toolbox(tok, agent.TOOLS, timeout_s=0.05))
    assert all(r.truncated and r.turns == 1 and r.sampled == 30 and r.tool_calls == 0 for r in batch.rollouts)
    # the budget is summed over turns: no trajectory samples more than max_new_tokens in all
    mid = SamplingParams(max_new_tokens=90, temperature=1.0, n=4)
    batch = agent_rollouts(model, tok, examples, mid, (1, 1), Toolbox(tok, agent.TOOLS, timeout_s=0.05))
    assert max(r.sampled for r in batch.rollouts) <= 90 and any(r.turns == 2 and r.truncated for r in batch.rollouts)
    full = agent_rollouts(model, tok, examples, PARAMS, (1, 1), Toolbox(tok, agent.TOOLS, timeout_s=0.05))
    # the context: the model's positions bound prompt + everything after it
    narrow = copy.deepcopy(model)
    narrow.config.max_position_embeddings = len(batch.rollouts[0].prompt_ids) + 100
    narrowed = agent_rollouts(narrow, tok, examples, PARAMS, (1, 1), Toolbox(tok, agent.TOOLS, timeout_s=0.05))
    assert max(len(r.sequence) for r in narrowed.rollouts) <= narrow.config.max_position_embeddings
    assert any(r.truncated and r.turns == 2 for r in narrowed.rollouts)
    assert max(len(r.sequence) for r in full.rollouts) > narrow.config.max_position_embeddings  # it bound them
    # a long tool result is cut to max_output_tokens, counted apart from the errors (the first turns are the
    # same with and without the cut: the same streams)
    first = [[m["content"] for m in r.messages if m["role"] == "tool"][:1] for r in full.rollouts]
    batch = agent_rollouts(model, tok, examples, PARAMS, (1, 1), Toolbox(tok, agent.TOOLS, timeout_s=0.05,
                                                                          max_output_tokens=3))
    cut = [[m["content"] for m in r.messages if m["role"] == "tool"][:1] for r in batch.rollouts]
    for whole, short in zip(first, cut):
        ids = [tok.encode(c, add_special_tokens=False) for c in whole]
        assert short == [tok.decode(i[:3]) + " [cut]" if len(i) > 3 else c for i, c in zip(ids, whole)]
    assert sum(r.tool_errors.get("output_cut", 0) for r in batch.rollouts) == sum(
        c.endswith(" [cut]") for r in batch.rollouts for m in r.messages if m["role"] == "tool" for c in [m["content"]])
    assert any(c and c[0].endswith(" [cut]") for c in cut) and all(r.tool_errors.keys() <= {"output_cut", *ERRORS}
                                                                  for r in batch.rollouts)


def test_a_trl_style_environment_runs_as_is(taught):
    """One Calculator per trajectory, reset with the example's fields (the prompt included, as TRL passes
    them); its tools are its public methods, bound to that instance; the batch carries the instances for
    get_reward."""
    model, tok = taught
    examples = [{"prompt": e.prompt, "answer": e.reference} for e in agent.problems(4)]
    box = Toolbox(tok, environment_factory=agent.Calculator, timeout_s=0.05)
    assert [s["function"]["name"] for s in box.schemas] == ["add", "multiply", "power", "subtract"]
    assert box.schemas == agent.SCHEMAS and box.reward_name == "Calculator"  # the same prompt as the functions'
    batch = agent_rollouts(model, tok, examples, PARAMS, (2, 1), box)
    envs = batch.columns["environments"]
    assert len(envs) == len(batch.rollouts) == 16 and len({id(e) for e in envs}) == 16
    for r, env in zip(batch.rollouts, envs):
        assert env.fields == examples[r.prompt_index]  # reset(**fields): prompt and answer
        called = [c["function"]["name"] for m in r.messages if m["role"] == "assistant"
                  for c in m.get("tool_calls", [])]
        assert [c[0] for c in env.calls] == [n for n in called if n in ("add", "multiply", "subtract")]  # its own
    rewards = box.reward(batch.prompts, batch.completions, **batch.columns)
    assert rewards == agent.tool_worked(batch.prompts, batch.completions, **batch.columns)
    assert 0 < sum(rewards) < len(rewards)


def test_a_llama_json_call_runs_and_its_result_is_the_templates_ipython_turn(tmp_path):
    """Llama 3.1's format: the whole turn is one JSON object; the result is appended as the published
    template's ipython turn, the call and result recorded as messages."""
    from pathlib import Path

    from atlas.sampler import Completion
    from atlas.train.agent import _Trajectory
    from tests.tiny import build_tokenizer

    template = (Path(__file__).parents[1] / "templates" / "llama3_1.jinja").read_text()
    tok = am.Tokenizer.from_pretrained(build_tokenizer(tmp_path, "llama3", chat_template=template))
    box = Toolbox(tok, [agent.multiply])
    assert box.format == "json"
    written = tok.encode('{"name": "multiply", "parameters": {"a": 3, "b": 4}}', add_special_tokens=False)
    (end,) = tok.encode("<|eot_id|>", add_special_tokens=False)
    trajectory = _Trajectory(0, 0, [1, 2], [{"role": "user", "content": "3 * 4?"}], None, box.tools_of(None))
    done = Completion(written + [end], [0.0] * (len(written) + 1), "stop", 0, [0.0] * (len(written) + 1))
    appended = trajectory.take_turn(done, tok, box)
    call, result = trajectory.messages[1:]
    assert call["tool_calls"][0]["function"] == {"name": "multiply", "arguments": {"a": 3, "b": 4}}
    assert result == {"role": "tool", "tool_call_id": "call_1_0", "name": "multiply", "content": "12"}
    assert tok.decode(appended, skip_special_tokens=False) == (
        '<|start_header_id|>ipython<|end_header_id|>\n\n"12"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n')
    assert trajectory.calls == 1 and not trajectory.errors
