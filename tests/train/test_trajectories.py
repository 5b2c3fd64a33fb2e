"""Agent trajectories rendered with real templates' published text (Qwen2.5, Qwen3, Llama 3.1; tests/templates,
as shipped by the checkpoints): the text equals transformers' `apply_chat_template` with the same tools and
messages, masks equal transformers' `return_assistant_tokens_mask` on a template with `{% generation %}`
blocks and are the assistant turns exactly on one without, Qwen3's rewriting gives one sequence per turn in
the context it rendered at that turn; SFT lowers the loss on tool-call tokens; GKD's teacher scores
exactly the student's sampled turn in the recorded context."""

from collections import Counter
from pathlib import Path

import pytest
import torch

import atlas.model as am
from atlas.data import trajectory_examples
from atlas.data.schema import parse_session
from atlas.train.data import as_conversation, encode_conversation, prompt_ids
from tests.data.records import make_record
from tests.data.test_transcripts import SEVERAL, calls
from tests.tiny import TOOLS_TEMPLATE, build_tokenizer

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Price of a SKU.", "parameters": {
    "type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}}},
    {"type": "function", "function": {"name": "convert", "description": "Convert an amount.", "parameters": {
        "type": "object", "properties": {"amount": {"type": "number"}, "to": {"type": "string"}}}}}]


def _conversation(*traces, reasoning=True):
    record = make_record(1, "Price the order.", traces=list(traces))
    split = trajectory_examples([parse_session(record)], tool_schemas=None, eval_fraction=0.0)
    (example,) = split.train
    messages = as_conversation(example)
    if not reasoning:
        messages = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
    return messages


def _runs(tok, ids, mask):
    runs, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("toks")
    return {"chatml": build_tokenizer(root / "chatml", "chatml", chat_template=None),
            "llama3": build_tokenizer(root / "llama3", "llama3", chat_template=None)}


def _pair(directory, template):
    from transformers import AutoTokenizer

    text = (TEMPLATES / f"{template}.jinja").read_text()
    ours = am.Tokenizer.from_pretrained(directory, chat_template=text)
    theirs = AutoTokenizer.from_pretrained(directory)
    theirs.chat_template = text
    return ours, theirs


@pytest.mark.parametrize("template, style", [("qwen2_5", "chatml"), ("qwen2_5_training", "chatml"),
                                             ("qwen3", "chatml"), ("llama3_1", "llama3")])
def test_rendering_equals_transformers_with_tools(dirs, template, style):
    ours, theirs = _pair(dirs[style], template)
    if template == "llama3_1":  # one call per message is all Llama 3.1's template takes
        messages = _conversation("HUMAN: go\n" + calls(("lookup", {"sku": "A-1"}, "c1")) + "\nTOOL: 12.5\nAI: ok")
    else:
        messages = _conversation(SEVERAL, "HUMAN: next\nAI: Shipping is free.")
    for gen, upto in ((False, len(messages)), (True, 1), (True, 3)):
        kw = dict(tools=TOOLS, add_generation_prompt=gen)
        assert ours.apply_chat_template(messages[:upto], **kw) == theirs.apply_chat_template(
            messages[:upto], tokenize=False, **kw)


def test_generation_block_masks_equal_transformers_and_cover_the_tool_calls(dirs):
    ours, theirs = _pair(dirs["chatml"], "qwen2_5_training")
    messages = _conversation(SEVERAL, "HUMAN: next\nAI: Shipping is free.", reasoning=False)
    (ids, mask), = encode_conversation(ours, messages, TOOLS)
    ref = theirs.apply_chat_template(messages, tools=TOOLS, tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=True)
    assert ids == ref["input_ids"] and mask == ref["assistant_masks"]
    assert _runs(ours, ids, mask)[0].startswith('\n<tool_call>\n{"name": "lookup", "arguments": {"sku": "A-1"}}')


def test_without_blocks_the_trained_tokens_are_the_assistant_turns_exactly(dirs):
    ours, _ = _pair(dirs["chatml"], "qwen2_5")
    counts = Counter()
    messages = _conversation(SEVERAL, "HUMAN: next\nAI: Shipping is free.")
    (ids, mask), = encode_conversation(ours, messages, TOOLS, counts=counts)
    assert ids == ours.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=False, tokenize=True)
    assert _runs(ours, ids, mask) == [
        '<tool_call>\n{"name": "lookup", "arguments": {"sku": "A-1"}}\n</tool_call>\n<tool_call>\n{"name": "convert",'
        ' "arguments": {"amount": 12.5, "to": "EUR"}}\n</tool_call><|im_end|>',
        "The order costs 11.40 EUR.<|im_end|>", "Shipping is free.<|im_end|>"]
    assert counts["reasoning_dropped"] == 1  # Qwen2.5's template renders no reasoning: dropped, counted


def test_qwen3_rewrites_earlier_turns_so_each_turn_is_its_own_sequence(dirs):
    ours, theirs = _pair(dirs["chatml"], "qwen3")
    messages = _conversation(SEVERAL, "HUMAN: next\nAI: Shipping is free.")
    counts = Counter()
    sequences = encode_conversation(ours, messages, TOOLS, counts=counts)
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    assert counts["per_turn"] == 1 and len(sequences) == len(turns) == 3
    for k, (ids, mask) in zip(turns, sequences):
        # the context the template renders at turn k (the turn last: its reasoning kept), as transformers does
        assert ids == theirs.apply_chat_template(messages[:k + 1], tools=TOOLS, tokenize=True)["input_ids"]
        context = theirs.apply_chat_template(messages[:k], tools=TOOLS, tokenize=True,
                                             add_generation_prompt=True)["input_ids"]
        assert ids[:len(context)] == context and not any(mask[:len(context)])
        assert _runs(ours, ids, mask) == [ours.decode(ids[len(context):]).removesuffix("\n")]  # the turn, whole
    assert _runs(ours, *sequences[0])[0].startswith("<think>\nI need the price, then the currency.\n</think>\n\n")
    whole = ours.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=False)
    assert "I need the price" not in whole  # why: the whole rendering drops the first turn's reasoning


def test_llama3_json_calls_are_trained_and_two_calls_are_a_clear_error(dirs):
    ours, _ = _pair(dirs["llama3"], "llama3_1")
    one = _conversation("HUMAN: go\n" + calls(("lookup", {"sku": "A-1"}, "c1")) + "\nTOOL: 12.5\nAI: ok")
    (ids, mask), = encode_conversation(ours, one, TOOLS)
    assert _runs(ours, ids, mask) == ['{"name": "lookup", "parameters": {"sku": "A-1"}}<|eot_id|>', "ok<|eot_id|>"]
    with pytest.raises(Exception, match="only supports single tool-calls"):
        encode_conversation(ours, _conversation(SEVERAL), TOOLS)


def test_a_template_that_renders_no_tool_calls_is_refused(dirs):
    tok = am.Tokenizer.from_pretrained(dirs["chatml"], chat_template="chatml")
    with pytest.raises(ValueError, match="does not render them"):
        encode_conversation(tok, _conversation(SEVERAL), TOOLS)


def _agent_sessions(n, offset=0):
    """Sessions of an agent that adds with its `add` tool: input, call, result, answer."""
    out = []
    for i in range(n):
        a, b = 10 + (7 * i + offset) % 80, 11 + (13 * i + offset) % 80
        trace = "\n".join([f"HUMAN: {a} + {b}", calls(("add", {"a": a, "b": b}, "c1")), f"TOOL: {a + b}",
                           f"AI: It is {a + b}."])
        out.append(parse_session(make_record(i + 1 + offset, f"Add {a} and {b}.", traces=[trace])))
    return out


def _tool_call_nll(model, tok, examples):
    """Mean NLL of the tokens of the assistant turns that call a tool."""
    total, count = 0.0, 0
    for e in examples:
        messages = as_conversation(e)
        k = next(k for k, m in enumerate(messages) if m.get("tool_calls"))
        context = prompt_ids(tok, {"prompt": messages[:k], "tools": e.tools})
        ids = tok.apply_chat_template(messages[:k + 1], tools=e.tools, add_generation_prompt=False, tokenize=True)
        with torch.no_grad():
            logp = model(torch.tensor([ids]))[0].log_softmax(-1)
        for t in range(len(context), len(ids)):
            total -= logp[t - 1, ids[t]].item()
            count += 1
    return total / count


def test_a_short_sft_run_lowers_the_loss_on_tool_call_tokens(tmp_path):
    from atlas.distill import SFT, SFTConfig
    from atlas.embedded import model_path

    tok = am.Tokenizer.from_pretrained(model_path("student"), chat_template=TOOLS_TEMPLATE)
    train = trajectory_examples(_agent_sessions(48), eval_fraction=0.0).train
    held = trajectory_examples(_agent_sessions(8, offset=100), eval_fraction=0.0).train
    model = am.from_pretrained(model_path("student"))
    before = _tool_call_nll(model, tok, held)
    trainer = SFT(model, tok, SFTConfig(output_dir=str(tmp_path), max_steps=30, lr=1e-3, batch_size=16,
                                        micro_batch_size=16, warmup_ratio=0.0))
    trainer.train(train)
    after = _tool_call_nll(model.eval(), tok, held)
    assert after < 0.5 * before, (before, after)


def test_gkd_teacher_scores_the_students_sampled_turn_in_the_recorded_context(tmp_path):
    from atlas.distill import GKD, GKDConfig
    from atlas.embedded import model_path
    from atlas.sampler import SamplingParams
    from atlas.train.data import turn_prompts
    from atlas.train.rollout import sample_rollouts

    tok = am.Tokenizer.from_pretrained(model_path("student"), chat_template=TOOLS_TEMPLATE)
    examples = trajectory_examples(_agent_sessions(2), eval_fraction=0.0).train
    config = GKDConfig(output_dir=str(tmp_path), max_steps=1, batch_size=2, micro_batch_size=8, lmbda=1.0,
                       max_new_tokens=16, seed=3)
    trainer = GKD(am.from_pretrained(model_path("student")), am.from_pretrained(model_path("teacher")), tok, config)
    seen, real = [], trainer.teacher.forward
    trainer.teacher.forward = lambda ids, **kw: seen.append(ids.tolist()) or real(ids, **kw)
    row = trainer.step(examples)
    turns = [t for e in examples for t in turn_prompts(e)]
    expected = sample_rollouts(am.from_pretrained(model_path("student")), tok, turns,
                               SamplingParams(max_new_tokens=16, temperature=0.9), (3, 1)).rollouts
    contexts = [prompt_ids(tok, t) for t in turns]
    assert len(contexts) == 4 and [r.prompt_ids for r in expected] == contexts  # two turns per trajectory
    scored = [[i for i in row_ids if i != tok.pad_token_id] for batch in seen for row_ids in batch]
    assert sorted(scored) == sorted(r.sequence for r in expected)  # the recorded context + the student's turn
    recorded = [tok.apply_chat_template(t["prompt"] + [e.messages[len(t["prompt"])]], tools=e.tools,
                                        add_generation_prompt=False, tokenize=True)
                for e in examples for t in turn_prompts(e)]
    assert not any(r.sequence == rec for r, rec in zip(expected, recorded))  # sampled, not the recorded turn
    assert row["on_policy"] == 1 and row["jsd_per_turn"] > 0
