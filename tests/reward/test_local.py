"""The in-process judge backend (atlas model + tokenizer + Sampler), on a tiny random model.

The model's judgements are noise: a random 2-layer model does not write JSON. These tests check the
transport and the batching (one generate call per temperature holding every pending prompt, the
temperatures RIM asks for, unparsable replies counted as invalid, never cached, and the items reported
as failed), not the scores.
"""

import pytest
import torch

import atlas.model as am
from atlas.reward import RIM, JudgeError, RIMConfig
from atlas.reward.clients import ChatRequest
from atlas.reward.local import LocalChatClient
from tests.tiny import build_tokenizer


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    tok = am.Tokenizer.from_pretrained(build_tokenizer(tmp_path_factory.mktemp("judge_tok"), style="chatml"))
    config = am.ModelConfig(model_type="qwen2", vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                            max_position_embeddings=4096, tie_word_embeddings=True,
                            eos_token_id=[tok.eos_token_id])
    torch.manual_seed(0)
    return am.Transformer(config).eval(), tok


def _spy(client, calls):
    for sampler, _, _ in client.models.values():
        original = sampler.generate

        def generate(prompt_ids, params, original=original):
            calls.append((len(prompt_ids), params.temperature, params.max_new_tokens))
            return original(prompt_ids, params)

        sampler.generate = generate


def test_rim_batches_pending_prompts_into_one_generate_per_temperature(judge):
    client = LocalChatClient({"judge": judge}, seed=0)
    calls = []
    _spy(client, calls)
    config = RIMConfig(small_model="judge", large_model="judge", max_tokens=6, active_judges=("accuracy", "process"))
    rim = RIM(config, client=client)
    results = rim.evaluate_batch(["What is 2+2?", "Name a colour."], ["4", "blue"])
    # tier 1: 2 items x 2 judges = 4 prompts per temperature; everything escalates (noise is not JSON)
    assert calls == [(4, 0.2, 6), (4, 0.5, 6), (4, 0.8, 6), (4, 0.3, 6)]
    assert client.generate_calls == 4
    for result in results:
        assert result.score is None and "arbiter failed" in result.error
        for call in result.audit:
            assert call.response is not None and call.error.startswith("invalid reply")
            assert call.prompt_tokens > 100 and 1 <= call.completion_tokens <= 6
    assert rim.stats["invalid_replies"] == 16 and rim.stats["failed_calls"] == 0
    with pytest.raises(JudgeError):
        rim(["What is 2+2?"], ["5"])


def test_duplicates_share_one_generate_and_invalid_replies_are_asked_again(judge):
    client = LocalChatClient({"judge": judge}, seed=0)
    calls = []
    _spy(client, calls)
    rim = RIM(RIMConfig(small_model="judge", large_model="judge", max_tokens=4, active_judges=("accuracy",),
                        failure_score=0.0), client=client)
    assert rim(["q", "q"], ["a", "a"]) == [0.0, 0.0]
    # the two identical items go out once: one prompt per tier-1 temperature, one for the arbiter
    assert calls == [(1, 0.2, 4), (1, 0.5, 4), (1, 0.8, 4), (1, 0.3, 4)] and rim.stats["cache_hits"] == 4
    rim(["q"], ["a"])
    # noise never parses, so nothing was cached: the same request reaches the model again
    assert client.generate_calls == 8 and rim.stats["cache_hits"] == 4 and rim.stats["failed_items"] == 3


def test_unknown_model_and_too_long_prompt_are_per_request_errors(judge):
    client = LocalChatClient({"judge": judge})
    ok = ChatRequest.make("judge", [{"role": "user", "content": "hi"}], 0.0, 3)
    unknown = ChatRequest.make("other", [{"role": "user", "content": "hi"}], 0.0, 3)
    too_long = ChatRequest.make("judge", [{"role": "user", "content": "hi"}], 0.0, 5000)
    res_ok, res_unknown, res_long = client.chat_batch([ok, unknown, too_long])
    assert res_ok.error is None and res_ok.completion_tokens <= 3 and res_ok.extra["finish_reason"]
    assert "not loaded" in res_unknown.error and "max_position_embeddings" in res_long.error
    assert client.generate_calls == 1
    with pytest.raises(ValueError, match="needs models"):
        LocalChatClient({})


def test_a_tokenizer_without_a_chat_template_is_refused_up_front(judge, tmp_path):
    bare = am.Tokenizer.from_pretrained(build_tokenizer(tmp_path, style="chatml", chat_template=None))
    with pytest.raises(ValueError, match="'judge' has no chat template.*chat_template='chatml'"):
        LocalChatClient({"judge": (judge[0], bare)})
