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


def test_without_a_template_encoding_works_and_chat_needs_an_explicit_choice(tmp_path):
    path = build_tokenizer(tmp_path, chat_template=None)
    tok = am.Tokenizer.from_pretrained(path)
    assert tok.chat_template is None and tok.decode(tok.encode("What is 12 times 7?")) == "What is 12 times 7?"
    with pytest.raises(ValueError, match=r"has no chat template .*chat_template='chatml'"):
        tok.apply_chat_template(CHAT[1:2])
    tok = am.Tokenizer.from_pretrained(path, chat_template="chatml")
    text = tok.apply_chat_template(CHAT[1:2])
    assert text == "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template(CHAT[1:2], tokenize=True)[0] == tok.token_to_id("<|im_start|>")


BRACKETS = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"


def test_an_explicit_template_wins_and_is_never_read_as_a_path(tmp_path, monkeypatch):
    path = build_tokenizer(tmp_path / "tok")  # ships a Qwen3-style template
    tok = am.Tokenizer.from_pretrained(path, chat_template=BRACKETS)
    assert tok.apply_chat_template(CHAT[1:2]) == "[user]What is 12 times 7?"
    (tmp_path / "chat.jinja").write_text(BRACKETS)
    monkeypatch.chdir(tmp_path)
    for not_a_template in ("chat.jinja", str(tmp_path / "chat.jinja"), "", "ChatML"):
        with pytest.raises(ValueError, match="never read as a file path"):
            am.Tokenizer.from_pretrained(path, chat_template=not_a_template)
    with pytest.raises(ValueError, match="not a valid Jinja template"):
        am.Tokenizer.from_pretrained(path, chat_template="{% for m in messages %}")


def test_a_chosen_template_is_saved_with_the_checkpoint(tmp_path):
    from transformers import AutoTokenizer

    bare = build_tokenizer(tmp_path / "bare", chat_template=None)
    am.Tokenizer.from_pretrained(bare, chat_template="chatml").save_pretrained(tmp_path / "out")
    saved = am.Tokenizer.from_pretrained(tmp_path / "out")
    want = "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n"
    assert saved.apply_chat_template(CHAT[1:2]) == want
    ref = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert ref.apply_chat_template(CHAT[1:2], tokenize=False, add_generation_prompt=True) == want
    # over a checkpoint whose template file would otherwise take precedence
    shipped = build_tokenizer(tmp_path / "shipped", chat_template=None)
    (shipped / "chat_template.jinja").write_text("{{ messages[0].content }}")
    am.Tokenizer.from_pretrained(shipped, chat_template=BRACKETS).save_pretrained(tmp_path / "out2")
    assert not (tmp_path / "out2" / "chat_template.jinja").exists()
    assert am.Tokenizer.from_pretrained(tmp_path / "out2").apply_chat_template(CHAT[1:2]) == "[user]What is 12 times 7?"
    # a tokenizer built in memory: none unless chosen
    raw = am.Tokenizer.from_pretrained(bare)._tok
    with pytest.raises(ValueError, match="this tokenizer has no chat template"):
        am.Tokenizer(raw, {"eos_token": "<|im_end|>"}).apply_chat_template(CHAT[1:2])
    am.Tokenizer(raw, {"eos_token": "<|im_end|>"}, chat_template="chatml").save_pretrained(tmp_path / "out3")
    assert am.Tokenizer.from_pretrained(tmp_path / "out3").apply_chat_template(CHAT[1:2]) == want


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
