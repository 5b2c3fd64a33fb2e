"""Which tokens are the assistant's (vs transformers, and decoded on ChatML / Llama-3 templates), the data
order, and micro-batches."""

from collections import Counter

import pytest
import torch

import atlas.model as am
from atlas.train.data import DataOrder, encode_conversation, micro_batches, targets_of
from tests.tiny import LLAMA3_TEMPLATE, QWEN3_TEMPLATE, build_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You add numbers."},
    {"role": "user", "content": "What is 12 times 7?"},
    {"role": "assistant", "content": "The answer is 84."},
    {"role": "user", "content": "And 3 times 7?"},
    {"role": "assistant", "content": "21"},
]
# Qwen3-like: earlier assistant turns lose their reasoning, the last keeps it
REWRITING = """{%- for message in messages %}
{%- if message.role == 'assistant' and not loop.last %}
{{- '<|im_start|>assistant\\n' + message.content.split('</think>')[-1] + '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""


def _runs(tok, ids, mask):
    """The decoded text of each contiguous run of masked tokens."""
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
    return {"generation": build_tokenizer(root / "gen", "chatml"),  # QWEN3_TEMPLATE: {% generation %} blocks
            "chatml": build_tokenizer(root / "chatml", "chatml", chat_template=None),
            "llama3": build_tokenizer(root / "llama3", "llama3")}


def test_generation_blocks_match_transformers(dirs):
    from transformers import AutoTokenizer

    tok = am.Tokenizer.from_pretrained(dirs["generation"])
    assert tok.chat_template == QWEN3_TEMPLATE
    (ids, mask), = encode_conversation(tok, CONVERSATION)
    ref = AutoTokenizer.from_pretrained(dirs["generation"]).apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert ids == ref["input_ids"] and mask == ref["assistant_masks"]
    assert _runs(tok, ids, mask) == ["The answer is 84.<|im_end|>", "21<|im_end|>"]
    ((_, last),) = encode_conversation(tok, CONVERSATION, last_turn_only=True)
    assert _runs(tok, ids, last) == ["21<|im_end|>"]


def test_chatml_without_blocks_is_rendered_turn_by_turn(dirs):
    tok = am.Tokenizer.from_pretrained(dirs["chatml"], chat_template="chatml")
    (ids, mask), = encode_conversation(tok, CONVERSATION)
    assert ids == tok.apply_chat_template(CONVERSATION, add_generation_prompt=False, tokenize=True)
    # each turn's content and its end-of-turn token; not the role header, not the newline after
    assert _runs(tok, ids, mask) == ["The answer is 84.<|im_end|>", "21<|im_end|>"]


def test_llama3_template_turn_by_turn(dirs):
    tok = am.Tokenizer.from_pretrained(dirs["llama3"])
    assert tok.chat_template == LLAMA3_TEMPLATE
    (ids, mask), = encode_conversation(tok, CONVERSATION)
    assert ids[0] == tok.token_to_id("<|begin_of_text|>")
    assert _runs(tok, ids, mask) == ["The answer is 84.<|eot_id|>", "21<|eot_id|>"]


def test_a_template_that_rewrites_earlier_turns_trains_each_turn_in_its_own_context(dirs):
    tok = am.Tokenizer.from_pretrained(dirs["chatml"], chat_template=REWRITING)
    thinking = [CONVERSATION[1], {"role": "assistant", "content": "<think>7 twelves</think>84"},
                CONVERSATION[3], {"role": "assistant", "content": "<think>7 threes</think>21"}]
    counts = Counter()
    first, second = encode_conversation(tok, thinking, counts=counts)
    assert counts["per_turn"] == 1
    # each turn with its reasoning, in the context the template rendered when it was the last turn
    assert _runs(tok, *first) == ["<think>7 twelves</think>84<|im_end|>"]
    assert first[0] == tok.apply_chat_template(thinking[:2], add_generation_prompt=False, tokenize=True)
    assert _runs(tok, *second) == ["<think>7 threes</think>21<|im_end|>"]
    assert "7 twelves" not in tok.decode(second[0])  # the full rendering, as the model sees it then
    ((ids, mask),) = encode_conversation(tok, thinking, last_turn_only=True)
    assert (ids, mask) == second


def test_conversation_needs_an_assistant_turn(dirs):
    tok = am.Tokenizer.from_pretrained(dirs["chatml"], chat_template="chatml")
    with pytest.raises(ValueError, match="assistant turn"):
        encode_conversation(tok, CONVERSATION[:2])


def test_data_order_is_a_seeded_permutation_per_epoch_and_resumes():
    order = DataOrder(10, seed=3)
    first = order.take(4) + order.take(4) + order.take(4)  # crosses the epoch end
    assert sorted(first[:10]) == list(range(10)) and first[:10] != list(range(10))
    again = DataOrder(10, seed=3)
    again.take(6)
    resumed = DataOrder(10, seed=3)
    resumed.load_state_dict(again.state_dict())
    assert resumed.take(6) == first[6:12]
    with pytest.raises(ValueError, match="same data"):
        DataOrder(11, seed=3).load_state_dict(again.state_dict())


def test_packed_and_padded_micro_batches_hold_the_same_targets():
    seqs = [([5, 6, 7, 8], [0, 0, 1, 1]), ([9, 10, 11], [0, 1, 1]), ([1, 2], [0, 1])]
    padded = micro_batches(seqs, 2, pack=False, pad_id=0)
    packed = micro_batches(seqs, 2, pack=True, pad_id=0)
    targets = [[int((mb.targets_BT != -100).sum()) for mb in mbs] for mbs in (padded, packed)]
    assert targets[0] == targets[1] == [4, 1]
    assert packed[0].cu_seqlens.tolist() == [0, 4, 7]
    assert packed[0].targets_BT.tolist() == [[-100, 7, 8, -100, 10, 11, -100]]
    assert padded[0].targets_BT.tolist() == [[-100, 7, 8, -100], [10, 11, -100, -100]]
    assert padded[0].attention_mask_BT.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert padded[1].attention_mask_BT is None  # a single full row needs no mask
    assert targets_of([1, 2, 3], [0, 0, 0]) == [-100, -100, -100]
    assert torch.equal(packed[1].input_ids_BT, torch.tensor([[1, 2]]))
