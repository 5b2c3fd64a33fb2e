"""Tokenizer: encode/decode and chat templates equal transformers' on tokenizers built in the test."""

import pytest
from jinja2.exceptions import TemplateError

import atlas.model as am
from tests.tiny import build_tokenizer

CHAT = [
    {"role": "system", "content": "You are a careful tutor."},
    {"role": "user", "content": "What is 12 times 7?"},
    {"role": "assistant", "content": "12 times 7 is 84.", "tool_calls": None},
    {"role": "user", "content": "And 84 / 7?  "},
]
TOOLS = [{"type": "function", "function": {"name": "calc", "description": "évalue <x>",
                                           "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def pair(request, tmp_path_factory):
    from transformers import AutoTokenizer

    path = build_tokenizer(tmp_path_factory.mktemp(request.param), style=request.param)
    return request.param, am.Tokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(pair, add_generation_prompt):
    style, tok, ref = pair
    kwargs = {"tools": TOOLS} if style == "chatml" else {}
    ours = tok.apply_chat_template(CHAT, add_generation_prompt=add_generation_prompt, **kwargs)
    theirs = ref.apply_chat_template(CHAT, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs)
    assert ours == theirs
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=add_generation_prompt, tokenize=True, **kwargs)
    assert ids == ref.apply_chat_template(CHAT, add_generation_prompt=add_generation_prompt, tokenize=True,
                                          return_dict=False, **kwargs)


def test_enable_thinking_passes_through(tmp_path):
    from transformers import AutoTokenizer

    path = build_tokenizer(tmp_path, style="chatml")  # its Qwen3-style template reads enable_thinking
    tok, ref = am.Tokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    off = tok.apply_chat_template(CHAT[:2], enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert off == ref.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert not tok.apply_chat_template(CHAT[:2]).endswith("</think>\n\n")


def test_encode_decode_and_special_tokens_match_transformers(pair):
    style, tok, ref = pair
    texts = ["Agents answer questions.", "x = 84 / 7  # ünïcode"]
    for text in texts:
        assert tok.encode(text) == ref.encode(text)
        assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    assert tok.encode_batch(texts) == [ref.encode(t) for t in texts]
    assert tok.decode_batch([ref.encode(t) for t in texts]) == ref.batch_decode([ref.encode(t) for t in texts])
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (
        ref.eos_token_id, ref.pad_token_id, ref.bos_token_id)
    if style == "llama3":
        assert tok.encode("hi")[0] == tok.bos_token_id


def test_chatml_default_when_checkpoint_has_no_template(tmp_path):
    tok = am.Tokenizer.from_pretrained(build_tokenizer(tmp_path, chat_template=None))
    text = tok.apply_chat_template(CHAT[1:2])
    assert text == "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template(CHAT[1:2], tokenize=True)[0] == tok.token_to_id("<|im_start|>")


def test_template_file_takes_precedence(tmp_path):
    path = build_tokenizer(tmp_path, chat_template=None)
    (path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")
    assert am.Tokenizer.from_pretrained(path).apply_chat_template(CHAT[1:2]) == "[user]What is 12 times 7?"


def test_template_errors_and_bad_messages(tmp_path):
    tok = am.Tokenizer.from_pretrained(build_tokenizer(tmp_path, style="llama3"))
    with pytest.raises(TemplateError, match="roles must be user or assistant"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="at least one message"):
        tok.apply_chat_template([])
    with pytest.raises(ValueError, match="role"):
        tok.apply_chat_template([{"content": "no role"}])


def test_missing_tokenizer_json_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json"):
        am.Tokenizer.from_pretrained(tmp_path)
