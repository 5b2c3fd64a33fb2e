"""Tiny random models and tokenizers built in the tests (no network): shared by the model, sampler and
reward tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SMALL = dict(vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)

# family -> (transformers config class name, model class name, config overrides)
FAMILIES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3_tied": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=24, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=24, tie_word_embeddings=False)),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        tie_word_embeddings=False, rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=32))),
    "llama_linear": ("LlamaConfig", "LlamaForCausalLM", dict(
        attention_bias=True, rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0))),
    "qwen2_yarn": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        tie_word_embeddings=False, rope_parameters=dict(
            rope_type="yarn", rope_theta=1000000.0, factor=4.0, original_max_position_embeddings=64))),
}


def hf_model(family: str, seed: int = 0, **overrides):
    """A transformers model of `family` with random weights (fp32, eval mode)."""
    import transformers

    config_cls, model_cls, extra = FAMILIES[family]
    config = getattr(transformers, config_cls)(**{**SMALL, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    # transformers' init leaves norms at 1 and biases at 0: randomise them so they are tested too
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                noise = torch.randn_like(p)
                p.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.1 * noise)
    return model


def save_hf(model, directory: Path, style: str = "v5", max_shard_size: str | None = None) -> Path:
    """Save with transformers, then rewrite config.json in the requested style.

    "v5": as transformers 5 writes it (`rope_parameters`); "hub": as transformers 4.x hub checkpoints carry
    it (top-level `rope_theta`, `rope_scaling` with the older `type` key).
    """
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    if style == "hub":
        path = Path(directory) / "config.json"
        config = json.loads(path.read_text())
        params = dict(config.pop("rope_parameters"))
        config["rope_theta"] = params.pop("rope_theta")
        kind = params.pop("rope_type")
        config["rope_scaling"] = None if kind == "default" else {"type": kind, **params}
        path.write_text(json.dumps(config))
    return Path(directory)


CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Agents answer questions; teachers verify the answers and give guidance.",
    "def add(a, b):\n    return a + b\n",
    "Reinforcement learning with group-relative advantages and KL penalties.",
    "What is 12 times 7? The answer is 84.",
    "Sessions are stored in Postgres and exported as JSONL for training.",
] * 20

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>"]

LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('roles must be user or assistant after the system message') }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {{- message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Qwen3-style: tools rendered with tojson, `{% generation %}` around assistant turns, enable_thinking.
QWEN3_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n# Tools\\n' }}
    {%- for tool in tools %}{{- tool | tojson }}{{- '\\n' }}{%- endfor %}
    {{- '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
    {%- if loop.index > 20 %}{% break %}{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""


# Hermes-style tool calling (Qwen2.5's format) in a compact ChatML template: tools listed by signature, calls
# in <tool_call> blocks, results in their own turns; no {% generation %} blocks (masked turn by turn).
TOOLS_TEMPLATE = """{%- if tools %}
{{- '<|im_start|>system\n' + (messages[0].content + '\n' if messages[0].role == 'system' else '') + 'Tools:' }}
{%- for tool in tools %}
{{- ' ' + tool.function.name + '(' + tool.function.parameters.properties | list | join(', ') + ')' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' %}
{{- '<|im_start|>assistant\n' + (message.content or '') }}
{%- for call in message.tool_calls or [] %}
{{- '<tool_call>{"name": "' + call.function.name + '", "arguments": ' }}
{{- call.function.arguments | tojson + '}</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}{{- '<|im_start|>tool\n' + message.content + '<|im_end|>\n' }}
{%- elif not (message.role == 'system' and loop.first) %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""


def build_tokenizer(directory: Path, style: str = "chatml", vocab_size: int = 320,
                    chat_template: str | None = "default") -> Path:
    """Train a byte-level BPE tokenizer on a small corpus and save it the way transformers does.

    style "chatml" (Qwen-like: eos <|im_end|>, pad <|endoftext|>, no BOS) or "llama3" (BOS added by the
    post-processor, eos <|eot_id|>). chat_template "default" picks the style's template; None writes none.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specials = CHATML_SPECIALS if style == "chatml" else LLAMA3_SPECIALS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(specials), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(specials)
    if style == "llama3":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512}
    if style == "chatml":
        config.update(eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None)
        template = QWEN3_TEMPLATE
    else:
        eot = {"__type": "AddedToken", "content": "<|eot_id|>", "special": True}
        config.update(bos_token="<|begin_of_text|>", eos_token=eot,
                      pad_token="<|end_of_text|>")
        template = LLAMA3_TEMPLATE
    if chat_template is not None:
        config["chat_template"] = template if chat_template == "default" else chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory
