"""A base checkpoint whose eos (`<|endoftext|>`) is not what its chat template closes turns with (`<|im_end|>`):
generation stops at the template's end of turn, SFT trains it as the turn's last token, and the export lists it."""

import json
import shutil

import pytest

import atlas.model as am
from atlas.checkpoint import export_hf
from atlas.embedded import model_path, task
from atlas.sampler import Sampler, SamplingParams
from atlas.train.data import encode_conversation
from tests.tiny import LLAMA3_TEMPLATE


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    """The embedded student (taught to end its answers with <|im_end|>) re-labelled as a base checkpoint."""
    out = tmp_path_factory.mktemp("base") / "student"
    shutil.copytree(model_path("student"), out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|endoftext|>"}))
    tok = am.Tokenizer.from_pretrained(out)
    model = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**model, "eos_token_id": tok.eos_token_id}))
    return out


def test_the_end_of_turn_is_read_from_the_template(base_checkpoint, tmp_path):
    tok = am.Tokenizer.from_pretrained(base_checkpoint)
    eot, eos = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    assert tok.eos_token_id == eos and tok.end_of_turn_ids == [eot] and tok.stop_token_ids == sorted([eos, eot])
    # Llama 3's <|eot_id|>; a template that closes turns with plain text gives none; so does one that cannot
    # render a one-turn conversation; rendering itself is unaffected
    llama = am.Tokenizer(tok._tok, {**tok.config, "eos_token": "<|endoftext|>"}, chat_template=LLAMA3_TEMPLATE)
    assert llama.end_of_turn_ids == []  # this vocabulary has no <|eot_id|>: the text after the turn is plain
    plain = am.Tokenizer(tok._tok, tok.config, chat_template="{% for m in messages %}{{ m.content }}\n{% endfor %}")
    assert plain.end_of_turn_ids == [] and plain.stop_token_ids == [eos]
    raising = am.Tokenizer(tok._tok, tok.config, chat_template="{{ raise_exception('system message required') }}")
    assert raising.end_of_turn_ids == [] and raising.stop_token_ids == [eos]


def test_generation_stops_at_the_end_of_turn_and_ignore_eos_turns_every_stop_off(base_checkpoint):
    model, tok = am.from_pretrained(base_checkpoint), am.Tokenizer.from_pretrained(base_checkpoint)
    prompts = [tok.apply_chat_template(e.prompt, tokenize=True) for e in task.examples("eval")[:8]]
    outs = Sampler(model, tok).generate(prompts, SamplingParams(max_new_tokens=24, temperature=0))
    eot = tok.token_to_id("<|im_end|>")
    assert all(o.finish_reason == "stop" and o.token_ids[-1] == eot and len(o.token_ids) < 24 for o in outs)
    assert Sampler(model).generate(prompts, SamplingParams(max_new_tokens=24, temperature=0))[0].finish_reason == \
        "length"  # without the tokenizer only the config's eos (<|endoftext|>) stops: the turn runs on
    fixed = Sampler(model, tok).generate(prompts, SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True))
    assert all(len(o.token_ids) == 24 and o.finish_reason == "length" for o in fixed)


def test_sft_trains_the_end_of_turn_and_the_export_stops_on_it(base_checkpoint, tmp_path):
    tok = am.Tokenizer.from_pretrained(base_checkpoint)
    no_blocks = am.Tokenizer(tok._tok, tok.config, chat_template=tok.chat_template.replace(
        "{% generation %}", "").replace("{% endgeneration %}", ""))  # masked turn by turn
    conversation = [{"role": "user", "content": "What is 1 + 2?"}, {"role": "assistant", "content": "3"}]
    for t in (tok, no_blocks):
        (ids, mask), = encode_conversation(t, conversation)
        trained = [i for i, m in zip(ids, mask) if m]
        assert trained[-1] == tok.token_to_id("<|im_end|>") and tok.decode(trained) == "3<|im_end|>"
    export_hf(am.from_pretrained(base_checkpoint), tmp_path / "hf", tok)
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tok.stop_token_ids
    from transformers import GenerationConfig

    assert tok.token_to_id("<|im_end|>") in GenerationConfig.from_pretrained(tmp_path / "hf").eos_token_id
