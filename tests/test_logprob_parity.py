"""Sampler log-probabilities equal the trainer's `model.token_logprobs` on the same sequences.

fp32: within 1e-5 at T = 1 and 0.7. bf16: the two compute one expression (log softmax of fp32-cast logits
times 1/T) on different logits, the KV-cached decode step's and the full forward's. Since log softmax is
1-Lipschitz per coordinate in the max norm, |lp_sampler - lp_trainer| <= (|dz_y| + max_v |dz_v|) / T
where dz = decode logits - full-forward logits: that is the bound asserted, per token, with dz measured
from the logits the sampler really drew from.
"""

import pytest
import torch

import atlas.model as am
import atlas.sampler as sampler_module
from atlas.sampler import Sampler, SamplingParams
from tests.tiny import hf_model, save_hf

PROMPTS = [[5, 9, 31, 2, 77], [7, 7, 100, 42, 13, 8, 250, 19, 3], [60, 61, 62]]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    hf = hf_model("qwen3", seed=3)
    with torch.no_grad():
        hf.lm_head.weight.mul_(8)  # peakier distributions than a random init's near-uniform ones
    return save_hf(hf, tmp_path_factory.mktemp("parity"))


def _trainer_logprobs(model, outs, temperature):
    """model.token_logprobs on each full sequence, at the completion's positions."""
    result = []
    for o in outs:
        prompt = PROMPTS[o.prompt_index]
        ids = torch.tensor(prompt + o.token_ids)[None]
        with torch.no_grad():
            hidden = model(ids, return_hidden=True)[0, len(prompt) - 1:-1]
            result.append(model.token_logprobs(hidden, torch.tensor(o.token_ids), temperature))
    return result


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fp32_sampler_logprobs_equal_the_trainers(ckpt, temperature):
    model = am.from_pretrained(ckpt, dtype=torch.float32)
    outs = Sampler(model).generate(PROMPTS, SamplingParams(max_new_tokens=16, temperature=temperature, n=2,
                                                           seed=1, ignore_eos=True))
    for o, trainer in zip(outs, _trainer_logprobs(model, outs, temperature)):
        assert (torch.tensor(o.logprobs) - trainer).abs().max().item() <= 1e-5


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_bf16_gap_is_within_the_logit_bound(ckpt, temperature, monkeypatch):
    model = am.from_pretrained(ckpt, dtype=torch.bfloat16)
    drawn = []  # the logits each decode step sampled from, [B, V] per step (no row stops: no compaction)
    real_sample = sampler_module.sample
    monkeypatch.setattr(sampler_module, "sample", lambda logits, *a: drawn.append(logits.float()) or
                        real_sample(logits, *a))
    steps = 16
    outs = Sampler(model).generate(PROMPTS, SamplingParams(max_new_tokens=steps, temperature=temperature, n=2,
                                                           seed=2, ignore_eos=True))
    assert len(drawn) == steps and all(len(o.token_ids) == steps for o in outs)
    gaps, slack = [], []
    for b, (o, trainer) in enumerate(zip(outs, _trainer_logprobs(model, outs, temperature))):
        prompt = PROMPTS[o.prompt_index]
        with torch.no_grad():
            full = model(torch.tensor(prompt + o.token_ids)[None])[0, len(prompt) - 1:-1].float()
        decode = torch.stack([drawn[t][b] for t in range(steps)])
        dz = decode - full
        y = torch.tensor(o.token_ids)
        bound = (dz.gather(1, y[:, None]).squeeze(1).abs() + dz.abs().amax(1)) / temperature
        gap = (torch.tensor(o.logprobs) - trainer).abs()
        assert (gap <= bound + 1e-5).all(), (gap - bound).max()
        gaps.append(gap)
        slack.append(bound)
    gaps = torch.cat(gaps)
    # bf16 really differs between the two paths here, so the bound is what holds them together
    assert gaps.max() > 0 and torch.cat(slack).max() > 0


def test_same_hidden_states_give_the_same_bits(ckpt):
    """Given identical hidden states, the sampler's scoring (LM head, then the row math) and the trainer's
    chunked kernel agree bit for bit in bf16 at T = 0.7: one expression, not two."""
    from atlas.kernels import token_logprobs

    model = am.from_pretrained(ckpt, dtype=torch.bfloat16)
    with torch.no_grad():
        hidden = model(torch.tensor([PROMPTS[1]]), return_hidden=True)[0]
        targets = torch.tensor(PROMPTS[1][1:] + [4])
        sampler_side = token_logprobs(model.lm_head(hidden), targets, temperature=0.7)
        trainer_side = model.token_logprobs(hidden, targets, 0.7)
    assert torch.equal(sampler_side, trainer_side)
