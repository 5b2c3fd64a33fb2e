"""Tokenizer: Hugging Face `tokenizers` plus the checkpoint's chat template, rendered as transformers does.

Reads `tokenizer.json` (the fast tokenizer: vocab, merges, pre/post-processing, added tokens) and
`tokenizer_config.json` (bos/eos/pad/unk names, added-token flags, the chat template, which newer
checkpoints keep in `chat_template.jinja` instead). The chat template is Jinja, rendered in jinja2's
immutable sandbox with transformers' environment: trim_blocks, lstrip_blocks, loop controls, a `tojson`
that does not HTML-escape, `raise_exception`, `strftime_now`, and the `{% generation %}` block (rendered as
its body). Template variables: messages, tools, documents, add_generation_prompt, the named special
tokens (bos_token, eos_token, ...) and any extra keyword (Qwen3's `enable_thinking`). Messages' keys
whose value is None are dropped first, as transformers does.

Which template: `chat_template=` (to `from_pretrained` or the constructor) is an explicit choice and wins
over the checkpoint's: "chatml" for `CHATML_TEMPLATE`, or the template's own Jinja text (a string is
never read as a file path; one without any `{{` or `{%` is refused, since it would render the same text
for every conversation). Without a choice the checkpoint's template is used. A checkpoint without one
gets none: loading and encoding work, and `apply_chat_template` raises a ValueError saying so and how to
choose, because a prompt format the model was never trained on would degrade it without a word.
`save_pretrained` writes a chosen template into the copy, so the checkpoint serves with the format it
was trained on.

Assistant-token masks (`return_assistant_tokens_mask=True`), as transformers computes them: the template
is rendered chunk by chunk, each `{% generation %}` block records the character span it emits, and a
token is the assistant's when its characters overlap such a span. A template without generation blocks
gives no mask here (atlas.train.data falls back to rendering turn by turn).

End of turn: what closes an assistant turn is the template's business, not only the eos (a base
checkpoint's eos is often `<|endoftext|>` while its chat template closes turns with `<|im_end|>`).
`end_of_turn_ids` reads it from the template once, lazily: a one-turn conversation is rendered and the
first token after the assistant's content is taken when it is a special token; a template that renders
no such token, or cannot render that conversation, gives none (never an error: rendering works as
before). `stop_token_ids` is the eos plus those: what the sampler stops on, what SFT trains as the
turn's last token, and what the HF export's generation_config.json lists. Read the same way, once:
`reasoning_key` (which message key, if any, the template renders as reasoning), `renders_tool_calls` and
`tool_call_format` (how a sampled tool call is read back: atlas.train.tools).

Left out: slow (sentencepiece/tiktoken-only) tokenizers, `continue_final_message`, tool schemas from
Python callables.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import re
import shutil
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as _HFTokenizer

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", *_TEMPLATE_FILES)
_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class Tokenizer:
    """encode/decode (single and batch) and apply_chat_template over a `tokenizers.Tokenizer`."""

    def __init__(self, tokenizer: _HFTokenizer, config: dict[str, Any] | None = None,
                 chat_template: str | None = None, source_dir: Path | None = None):
        """`config` is tokenizer_config.json's content (its "chat_template" is the checkpoint's template);
        `chat_template` an explicit choice: "chatml" or the Jinja text (see the module docstring)."""
        self._tok = tokenizer
        self.config = dict(config or {})
        self._checkpoint_template = _template_from_config(self.config)
        self.chat_template = _chosen(chat_template) if chat_template is not None else self._checkpoint_template
        self.source_dir = source_dir
        self.special_tokens = {k: v for k in _NAMED_SPECIALS if (v := _token_str(self.config.get(k)))}
        for name in ("bos", "eos", "pad", "unk"):
            token = self.special_tokens.get(f"{name}_token")
            token_id = None if token is None else self._tok.token_to_id(token)
            if token is not None and token_id is None:
                raise ValueError(f"tokenizer_config {name}_token {token!r} is not in the vocabulary")
            setattr(self, f"{name}_token", token)
            setattr(self, f"{name}_token_id", token_id)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, chat_template: str | None = None) -> Tokenizer:
        """Load a checkpoint's tokenizer; `chat_template` ("chatml" or Jinja text) replaces its template."""
        from atlas.model.weights import resolve

        directory = resolve(path_or_hub_id)
        if not (directory / "tokenizer.json").exists():
            raise ValueError(
                f"no tokenizer.json in {directory}: atlas reads fast-tokenizer files; convert once with "
                "transformers: AutoTokenizer.from_pretrained(dir).save_pretrained(dir)"
            )
        config = _read_json(directory / "tokenizer_config.json")
        for key, value in _read_json(directory / "special_tokens_map.json").items():
            config.setdefault(key, value)
        # as transformers: a template file takes precedence over tokenizer_config's entry
        if (directory / "chat_template.jinja").exists():
            config["chat_template"] = (directory / "chat_template.jinja").read_text(encoding="utf-8")
        elif (directory / "chat_template.json").exists():
            config["chat_template"] = _read_json(directory / "chat_template.json").get("chat_template")
        tok = _HFTokenizer.from_file(str(directory / "tokenizer.json"))
        return cls(tok, config, chat_template, source_dir=directory)

    @functools.cached_property
    def end_of_turn_ids(self) -> list[int]:
        """The special token the chat template writes right after an assistant's content ([] when none can
        be read); see the module docstring."""
        sentinel = "Sentinel reply 7f3a."
        try:
            text = self.apply_chat_template([{"role": "user", "content": "Hi."}, {"role": "assistant",
                                                                                 "content": sentinel}],
                                            add_generation_prompt=False)
        except Exception:  # noqa: BLE001 (any template error means: nothing to read, fall back to the eos)
            return []
        at = text.rfind(sentinel)
        if at < 0:
            return []
        tail = self._tok.encode(text[at + len(sentinel):], add_special_tokens=False).ids
        specials = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        return tail[:1] if tail and tail[0] in specials else []

    @functools.cached_property
    def reasoning_key(self) -> str | None:
        """The assistant-message key whose text the chat template renders as reasoning ("reasoning_content"
        for Qwen3 and DeepSeek, "thinking" for others), or None when it renders none: read once by
        rendering a one-turn conversation, never raising."""
        for key in REASONING_KEYS:
            if _renders(self, [{"role": "user", "content": "Hi."},
                               {"role": "assistant", "content": "Done.", key: _SENTINEL}]):
                return key
        return None

    @functools.cached_property
    def renders_tool_calls(self) -> bool:
        """Whether the chat template writes an assistant message's `tool_calls` (a template that does not
        would train an agent's turns without its calls)."""
        return self.tool_call_format is not None or _renders(self, _TOOL_CALL_TURN)

    @functools.cached_property
    def tool_call_format(self) -> str | None:
        """How the template writes a tool call, so a sampled turn can be read back: "hermes" (`<tool_call>
        {json}</tool_call>` blocks: Qwen2.5, Qwen3), "json" (the turn is one `{"name", "parameters"}` object:
        Llama 3.1), or None (neither, or no tool calls at all)."""
        try:
            text = self.apply_chat_template(_TOOL_CALL_TURN, add_generation_prompt=False)
        except Exception:  # noqa: BLE001 (a template that cannot render a call has no format)
            return None
        if re.search(r"<tool_call>\s*\{\s*\"name\":\s*\"" + _SENTINEL, text):
            return "hermes"
        if re.search(r"\{\s*\"name\":\s*\"" + _SENTINEL + r"\",\s*\"(parameters|arguments)\"", text):
            return "json"
        return None

    @property
    def stop_token_ids(self) -> list[int]:
        """The eos and the template's end-of-turn token: where a generated assistant turn ends."""
        return sorted({*self.end_of_turn_ids, *([self.eos_token_id] if self.eos_token_id is not None else [])})

    @property
    def vocab_size(self) -> int:
        """Size including added tokens (the model's embedding may be larger, padded for efficiency)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """Every piece (added tokens included) and its id."""
        return self._tok.get_vocab(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """As transformers: `add_special_tokens` applies the post-processor (e.g. Llama 3's BOS)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        return self._tok.decode_batch([list(ids) for ids in batch], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        return_assistant_tokens_mask: bool = False,
        **kwargs: Any,
    ) -> str | list[int] | dict[str, list[int]]:
        """Render `messages` with the checkpoint's template; token ids (no extra specials) if `tokenize`;
        with `return_assistant_tokens_mask`, {"input_ids", "assistant_masks"} (1 on tokens inside the
        template's `{% generation %}` blocks), which needs a template that has such blocks."""
        if self.chat_template is None:
            where = f"the checkpoint at {self.source_dir}" if self.source_dir else "this tokenizer"
            raise ValueError(
                f"{where} has no chat template (none in tokenizer_config.json, chat_template.jinja or "
                "chat_template.json), and atlas does not guess a prompt format the model was not trained on; "
                "choose one: Tokenizer.from_pretrained(path, chat_template='chatml') for ChatML, or "
                "chat_template=<the Jinja template text the model was trained with>"
            )
        if not messages:
            raise ValueError("apply_chat_template needs at least one message")
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise ValueError(f"each message must be a dict with a 'role', got {m!r}")
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        variables = dict(messages=messages, tools=tools, documents=documents,
                         add_generation_prompt=add_generation_prompt, **{**self.special_tokens, **kwargs})
        template = _compile(self.chat_template)
        if not return_assistant_tokens_mask:
            text = template.render(**variables)
            return self.encode(text, add_special_tokens=False) if tokenize else text
        if not has_generation_blocks(self.chat_template):
            raise ValueError("return_assistant_tokens_mask needs a chat template with {% generation %} blocks; "
                             "this one has none (atlas.train.data.encode_conversation renders turn by turn)")
        chunks: list[str] = []
        spans: list[tuple[int, int]] = []
        token = _SPANS.set((chunks, spans))
        try:
            for chunk in template.generate(**variables):
                chunks.append(chunk)
        finally:
            _SPANS.reset(token)
        ids, mask = self.encode_with_spans("".join(chunks), spans)
        return {"input_ids": ids, "assistant_masks": mask}

    def encode_with_spans(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """Token ids of `text` (no extra specials) and a 0/1 mask: 1 where a token's characters overlap
        one of the character spans [start, end)."""
        enc = self._tok.encode(text, add_special_tokens=False)
        mask = [int(any(a < e and b > s for s, e in spans)) for a, b in enc.offsets]
        return enc.ids, mask

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Copy the tokenizer files it was loaded from (or write them when it was built in memory)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        chosen = self.chat_template != self._checkpoint_template
        if self.source_dir is not None:
            # a chosen template replaces the checkpoint's, whose files would take precedence over it
            skip = _TEMPLATE_FILES if chosen else ()
            for name in _FILES:
                if name not in skip and (self.source_dir / name).exists():
                    shutil.copyfile(self.source_dir / name, directory / name)
            if not chosen:
                return
            config = _read_json(self.source_dir / "tokenizer_config.json")
        else:
            self._tok.save(str(directory / "tokenizer.json"))
            config = {**self.config, "tokenizer_class": self.config.get("tokenizer_class", "PreTrainedTokenizerFast")}
        config.pop("chat_template", None)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
_SENTINEL = "sentinel7f3a"


_TOOL_CALL_TURN = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call_0", "type": "function", "function": {"name": _SENTINEL, "arguments": {"x": 1}}}]}]


def _renders(tokenizer: Tokenizer, messages: list[dict[str, Any]]) -> bool:
    """Whether rendering `messages` writes the sentinel; a template that cannot render them does not."""
    try:
        return _SENTINEL in tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    except Exception:  # noqa: BLE001 (a template's own error means: it does not render this)
        return False


def stop_ids(eos_token_id: list[int], tokenizer: Tokenizer | None) -> list[int]:
    """Where generation ends: a model config's eos ids and, with a tokenizer, its `stop_token_ids` (the
    eos and the chat template's end of turn). The sampler's stop set and the HF export's eos list."""
    return sorted({*eos_token_id, *(tokenizer.stop_token_ids if tokenizer is not None else [])})


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _token_str(value: Any) -> str | None:
    """tokenizer_config stores special tokens as strings or as AddedToken dicts ({"content": ...})."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _template_from_config(config: dict[str, Any]) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _chosen(chat_template: Any) -> str:
    """An explicit chat_template argument as template text."""
    if chat_template == "chatml":
        return CHATML_TEMPLATE
    if not isinstance(chat_template, str) or not ("{{" in chat_template or "{%" in chat_template):
        raise ValueError(
            f"chat_template must be 'chatml' or a Jinja chat template's text, got {chat_template!r:.80}; "
            "a template string is never read as a file path: pass Path(file).read_text() for a file")
    try:
        _compile(chat_template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ValueError(f"chat_template is not a valid Jinja template: {exc}") from None
    return chat_template


# While a mask is being computed: (the chunks rendered so far, the generation spans found). The template
# is compiled once and cached, so the tracker lives in a context variable, not on the environment.
_SPANS: contextvars.ContextVar[tuple[list[str], list[tuple[int, int]]] | None] = contextvars.ContextVar(
    "atlas_generation_spans", default=None)


def has_generation_blocks(template: str) -> bool:
    return re.search(r"{%-?\s*generation\s*-?%}", template) is not None


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text: rendered as its body, and, while a
    mask is being computed, recorded as a character span. `Template.generate` yields every earlier chunk
    before this block runs, so the text rendered so far gives the span's start."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        body = caller()
        tracker = _SPANS.get()
        if tracker is not None:
            chunks, spans = tracker
            start = sum(len(c) for c in chunks)
            spans.append((start, start + len(body)))
        return body


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
