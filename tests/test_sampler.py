"""The sampler's parity chain: cache vs full forward, ragged vs alone, greedy vs transformers, seeds, stops."""

import pytest
import torch

import atlas.model as am
from atlas.model.prepack import PACK_MIN_ELEMENTS, prepacked
from atlas.sampler import Sampler, SamplingParams
from tests.tiny import hf_model, save_hf

VOCAB = 320


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


# "wide": every weight has >= 2^17 entries, so on CPU the eager sampler computes them prepacked (oneDNN)
SHAPES = {"small": {}, "wide": dict(hidden_size=512, intermediate_size=1024, num_attention_heads=8,
                                    num_key_value_heads=4, head_dim=64)}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def pair(request, tmp_path_factory):
    """A tiny Qwen3 (untied) whose LM head is scaled up so greedy decoding has no near-ties."""
    hf = hf_model("qwen3", seed=1, **SHAPES[request.param])
    with torch.no_grad():
        hf.lm_head.weight.mul_(30 if request.param == "small" else 10)
    hf.generation_config.eos_token_id = None
    hf.config.eos_token_id = None
    model = am.from_pretrained(save_hf(hf, tmp_path_factory.mktemp("peaky")))
    packs = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.numel() >= PACK_MIN_ELEMENTS]
    assert len(packs) == (0 if request.param == "small" else 1 + 7 * hf.config.num_hidden_layers)
    return hf, model


def _full_logprobs(model, prompt, completion, temperature):
    ids = torch.tensor(prompt + completion)[None]
    with torch.no_grad():
        logits = model(ids)[0, len(prompt) - 1:-1].double()
    return (logits / temperature).log_softmax(-1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_greedy_equals_transformers_generate(pair):
    hf, model = pair
    for prompt in _prompts([5, 17, 30], seed=3):
        ours = Sampler(model).generate([prompt], SamplingParams(max_new_tokens=24, temperature=0))[0]
        ids = torch.tensor([prompt])
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert ours.token_ids == ref
        assert ours.finish_reason == "length"


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_logprobs_equal_the_trainers_full_forward(pair, temperature):
    """Every decode step's cached logits agree with one full forward (T = 1 for greedy)."""
    _, model = pair
    prompts = _prompts([4, 19, 11], seed=4)
    outs = Sampler(model).generate(prompts, SamplingParams(max_new_tokens=20, temperature=temperature, seed=0))
    for out in outs:
        ref = _full_logprobs(model, prompts[out.prompt_index], out.token_ids, temperature or 1.0)
        assert torch.allclose(torch.tensor(out.logprobs, dtype=torch.float64), ref, atol=2e-4)
        # no truncation: the sampled distribution is the full one (checked against the float64 reference,
        # not against out.logprobs, which is the same buffer in that case)
        assert torch.allclose(torch.tensor(out.sampled_logprobs, dtype=torch.float64), ref, atol=2e-4)


def test_ragged_batch_equals_each_prompt_alone(pair):
    _, model = pair
    prompts = _prompts([3, 25, 9, 14], seed=5)
    free = Sampler(model).generate(prompts, SamplingParams(max_new_tokens=16, temperature=0))
    # stop tokens that some rows hit early exercise the compaction of finished rows mid-batch
    stops = [free[0].token_ids[4], free[2].token_ids[9]]
    params = SamplingParams(max_new_tokens=16, temperature=0, stop_token_ids=stops)
    batch = Sampler(model).generate(prompts, params)
    assert batch[0].finish_reason == "stop" and len(batch[0].token_ids) <= 5
    for i, p in enumerate(prompts):
        alone = Sampler(model).generate([p], params)[0]
        assert batch[i].token_ids == alone.token_ids
        assert batch[i].finish_reason == alone.finish_reason
        assert torch.allclose(torch.tensor(batch[i].logprobs), torch.tensor(alone.logprobs), atol=1e-4)


def test_same_seed_same_samples_different_seed_different(pair):
    _, model = pair
    prompts = _prompts([6, 10], seed=6)
    s = Sampler(model)

    def run(seed):
        return [o.token_ids for o in s.generate(prompts, SamplingParams(max_new_tokens=12, temperature=2.0,
                                                                       n=3, seed=seed))]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_n_samples_come_back_prompt_major(pair):
    _, model = pair
    prompts = _prompts([5, 8, 3], seed=7)
    outs = Sampler(model).generate(prompts, SamplingParams(max_new_tokens=8, temperature=3.0, n=4, seed=0))
    assert [o.prompt_index for o in outs] == [0] * 4 + [1] * 4 + [2] * 4
    assert len({tuple(o.token_ids) for o in outs[:4]}) > 1  # the group's samples are not copies
    for o in outs:  # each sample continues its own prompt (forked caches are independent)
        ref = _full_logprobs(model, prompts[o.prompt_index], o.token_ids, 3.0)
        assert torch.allclose(torch.tensor(o.logprobs, dtype=torch.float64), ref, atol=2e-4)


def test_eos_and_stop_tokens_end_rows_early(pair):
    _, model = pair
    prompt = _prompts([9], seed=8)[0]
    greedy = Sampler(model).generate([prompt], SamplingParams(max_new_tokens=12, temperature=0))[0].token_ids
    stop_at = greedy[3]
    first = greedy.index(stop_at)
    out = Sampler(model).generate([prompt], SamplingParams(max_new_tokens=12, temperature=0,
                                                           stop_token_ids=[stop_at]))[0]
    assert out.token_ids == greedy[:first + 1] and out.finish_reason == "stop"
    assert len(out.logprobs) == len(out.token_ids)
    # the model's own EOS (config) stops too, unless ignore_eos
    model.config.eos_token_id = [stop_at]
    try:
        assert Sampler(model).generate([prompt], SamplingParams(max_new_tokens=12, temperature=0))[0] == out
        free = Sampler(model).generate([prompt], SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True))
        assert free[0].token_ids == greedy and free[0].finish_reason == "length"
    finally:
        model.config.eos_token_id = []


def test_top_k_1_equals_greedy(pair):
    _, model = pair
    prompts = _prompts([4, 12], seed=9)
    greedy = Sampler(model).generate(prompts, SamplingParams(max_new_tokens=10, temperature=0))
    topk1 = Sampler(model).generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.5, top_k=1, seed=3))
    assert [o.token_ids for o in topk1] == [o.token_ids for o in greedy]
    assert all(lp == 0.0 for o in topk1 for lp in o.sampled_logprobs)  # one token left: probability 1


@pytest.mark.parametrize("params", [dict(top_k=5), dict(top_p=0.6), dict(min_p=0.05), dict(top_k=8, top_p=0.9)])
def test_truncated_sampling_stays_in_the_set_and_reports_its_logprob(pair, params):
    _, model = pair
    prompt = _prompts([7], seed=10)[0]
    T = 1.7
    sp = SamplingParams(max_new_tokens=10, temperature=T, n=6, seed=5, **params)
    for out in Sampler(model).generate([prompt], sp):
        ids = torch.tensor(prompt + out.token_ids)[None]
        with torch.no_grad():
            z = model(ids)[0, len(prompt) - 1:-1].double() / T
        for t, token in enumerate(out.token_ids):
            probs = z[t].softmax(-1)
            keep = torch.ones_like(probs, dtype=torch.bool)
            if "top_k" in params:
                keep &= z[t] >= z[t].topk(params["top_k"]).values[-1]
            if "top_p" in params:
                p_sorted, order = probs.masked_fill(~keep, 0).sort(descending=True)
                p_sorted = p_sorted / p_sorted.sum()
                nucleus = torch.zeros_like(keep)
                nucleus[order] = (p_sorted.cumsum(0) - p_sorted) < params["top_p"]
                keep &= nucleus
            if "min_p" in params:
                keep &= probs >= params["min_p"] * probs.max()
            assert keep[token], f"step {t}: token {token} is outside the truncated set"
            expected = (probs[token] / probs[keep].sum()).log().item()
            assert out.sampled_logprobs[t] == pytest.approx(expected, abs=2e-4)
            assert out.logprobs[t] == pytest.approx(probs[token].log().item(), abs=2e-4)


def test_samples_follow_the_temperature_scaled_distribution(pair):
    _, model = pair
    prompt = _prompts([6], seed=12)[0]
    T, n = 4.0, 3000
    outs = Sampler(model).generate([prompt], SamplingParams(max_new_tokens=1, temperature=T, n=n, seed=0))
    with torch.no_grad():
        probs = (model(torch.tensor([prompt]))[0, -1].double() / T).softmax(-1)
    counts = torch.bincount(torch.tensor([o.token_ids[0] for o in outs]), minlength=VOCAB).double()
    top = probs.topk(5).indices
    # each of the five likeliest tokens' frequency within 5 binomial standard deviations
    std = (probs[top] * (1 - probs[top]) / n).sqrt()
    assert ((counts[top] / n - probs[top]).abs() <= 5 * std + 1e-3).all()


@pytest.mark.parametrize(
    "prompts, params, message",
    [
        ([], {}, "prompt_ids is empty"),
        ([[1, 2], []], {}, "prompt 1 is empty"),
        ([[1] * 500], {"max_new_tokens": 20}, "max_position_embeddings"),
        ([[1, VOCAB]], {}, "outside"),
    ],
)
def test_bad_prompts(pair, prompts, params, message):
    _, model = pair
    with pytest.raises(ValueError, match=message):
        Sampler(model).generate(prompts, SamplingParams(**params))


@pytest.mark.parametrize("params, message", [(dict(n=0), "n \\(samples"), (dict(temperature=-0.1), "temperature"),
                                             (dict(top_p=0), "top_p"), (dict(max_new_tokens=0), "max_new_tokens")])
def test_bad_sampling_params(params, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**params)


def _stops_that_end_rows_early(model, prompts, params):
    """Stop ids taken from free-running samples, so that some rows really stop (and are compacted) early."""
    free = Sampler(model).generate(prompts, params)
    return sorted({free[0].token_ids[2], free[3].token_ids[5]})


@pytest.mark.slow
def test_compiled_decode_equals_eager(pair):
    """compile=True (fixed-shape cache, torch.compile'd step, no compaction) samples the same tokens with the
    same logprobs as eager (which compacts finished rows)."""
    _, model = pair
    prompts = _prompts([4, 13, 9], seed=13)
    params = SamplingParams(max_new_tokens=12, temperature=0.8, n=2, seed=3)
    params.stop_token_ids = _stops_that_end_rows_early(model, prompts, params)
    others = _prompts([7, 11, 3], seed=14)  # the same (rows, rounded cache length): reuses step and cache
    compiled = Sampler(model, compile=True)
    graphs, caches, early = [], [], 0
    for batch in (prompts, prompts, others):
        outs = compiled.generate(batch, params)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        caches.append(compiled._cache)  # one cache, kept at fixed addresses for CUDA graphs
        for a, b in zip(Sampler(model).generate(batch, params), outs):
            assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
            early += a.finish_reason == "stop" and len(a.token_ids) < params.max_new_tokens
    assert early >= 2, "no row stopped early: compaction (where the paths differ) was not exercised"
    assert graphs[0] == graphs[1] == graphs[2], "a later call recompiled the decode step"
    assert caches[0] is caches[1] is caches[2]


def test_seeded_streams_ignore_check_every_and_compaction(pair):
    """The same seeds give the same tokens whether finished rows are compacted every step or every 8th."""
    _, model = pair
    prompts = _prompts([4, 13, 9, 6], seed=15)
    params = SamplingParams(max_new_tokens=14, temperature=1.0, n=3, seed=7)
    params.stop_token_ids = _stops_that_end_rows_early(model, prompts, params)
    every = Sampler(model, check_every=1).generate(prompts, params)
    eighth = Sampler(model, check_every=8).generate(prompts, params)
    assert [o.token_ids for o in every] == [o.token_ids for o in eighth]
    assert sum(o.finish_reason == "stop" and len(o.token_ids) < 8 for o in every) >= 2  # compacted before step 8


def test_a_prompt_samples_the_same_alone_or_among_others(pair):
    _, model = pair
    prompts = _prompts([5, 18, 7], seed=16)
    params = SamplingParams(max_new_tokens=10, temperature=1.2, n=2)
    together = Sampler(model).generate(prompts, params, prompt_seeds=[101, 202, 303])
    alone = Sampler(model).generate([prompts[1]], params, prompt_seeds=[202])
    first_two = Sampler(model).generate([prompts[2], prompts[1]], params, prompt_seeds=[303, 202])
    assert [o.token_ids for o in together[2:4]] == [o.token_ids for o in alone] == [
        o.token_ids for o in first_two[2:4]]
    assert together[2].token_ids != together[3].token_ids  # the group's samples draw their own streams
    # default seeds derive from params.seed and the prompt's index
    seeded = SamplingParams(max_new_tokens=10, temperature=1.2, n=2, seed=5)
    assert [o.token_ids for o in Sampler(model).generate(prompts, seeded)] == [
        o.token_ids for o in Sampler(model).generate(prompts, seeded)]
    with pytest.raises(ValueError, match="prompt_seeds"):
        Sampler(model).generate(prompts, params, prompt_seeds=[1, 2])


def test_uniforms_are_uniform_and_independent_across_rows_and_steps():
    from atlas.sampler import uniforms

    u = uniforms(list(range(64)), 4, 256, "cpu").double()  # 256 rows x 256 steps
    assert u.min() >= 0 and u.max() < 1
    # mean and variance of U(0, 1) within 5 standard errors, and no correlation between neighbours
    n = u.numel()
    assert abs(u.mean().item() - 0.5) < 5 * (1 / 12 / n) ** 0.5
    assert abs(u.var().item() - 1 / 12) < 5 * 0.0745 / n ** 0.5
    for a, b in ((u[:, 1:], u[:, :-1]), (u[1:], u[:-1])):
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(corr) < 5 / a.numel() ** 0.5


def test_prepacked_linears_compute_what_the_plain_ones_do_and_are_restored(pair):
    """Inside `prepacked`, each packed layer's output equals F.linear's to fp32 rounding (and the branch ran:
    the module's forward is replaced); outside, the class's forward again."""
    _, model = pair
    x = torch.randn(3, 1, model.config.hidden_size)
    layer = model.layers[0].self_attn.q_proj
    wide = layer.weight.numel() >= PACK_MIN_ELEMENTS
    assert not wide or torch.backends.mkldnn.is_available()  # this CPU build has oneDNN: the wide case packs
    plain = layer(x)
    with torch.no_grad(), prepacked(model):
        packed = layer(x)
        assert ("forward" in vars(layer)) == wide
    assert "forward" not in vars(layer)
    torch.testing.assert_close(packed, plain.detach(), rtol=1e-5, atol=1e-5)
    if wide:
        with pytest.raises(ValueError, match="no_grad"), prepacked(model):
            pass
        assert "forward" not in vars(layer)
