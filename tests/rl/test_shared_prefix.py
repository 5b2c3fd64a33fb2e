"""Shared-prefix passes (each prompt once, its completions after it: atlas.train.rollout) give what G separate
sequences give: hidden states, log-probabilities, the loss and every gradient, against independent unshared
computations (each sequence alone, a padded batch, a packed row without parents), in float64 and through
the production fp32 path with the LM head's chunks smaller than a prompt; for agent trajectories (tool
turns masked), with activation checkpointing, on 2 FSDP2 processes (fp32 and bf16 mixed precision); and a
GRPO run with mu = 2 cut by SIGTERM mid rollout batch equals the unshared run. `zero_variance_groups: skip`
changes the loss as GRPO's docstring says (a hand-computed case)."""

import random

import pytest
import torch

import atlas.distributed as ad
import atlas.kernels.common as kernel_common
import atlas.model as am
import atlas.rl.grpo as grpo_module
import atlas.train.rollout as rollout_module
from atlas.embedded import model_path, task
from atlas.reward import answer_match
from atlas.rl import GRPO, GRPOConfig
from atlas.train.metrics import read_metrics
from atlas.train.rollout import Rollout, rollout_micro_batches
from tests.multiproc import run_ranks
from tests.signals import sigterm_after

VOCAB = 96


def _model(seed=0, dtype=torch.float64):
    config = am.ModelConfig(model_type="qwen3", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return am.Transformer(config).to(dtype)


def _rollouts(prompt_lengths, G, seed=0, agent=False):
    """G completions (1-12 tokens) per prompt; agent=True: a sampled turn, a tool turn (mask 0), a second
    sampled turn."""
    rng = random.Random(seed)
    out = []
    for i, P in enumerate(prompt_lengths):
        prompt = [rng.randrange(1, VOCAB) for _ in range(P)]
        for j in range(G):
            parts = [rng.randint(1, 6), rng.randint(2, 5), rng.randint(1, 6)] if agent else [rng.randint(1, 12)]
            mask = [1] * parts[0] + [0] * parts[1] + [1] * parts[2] if agent else None
            completion = [rng.randrange(1, VOCAB) for _ in range(sum(parts))]
            out.append(Rollout(i, j, prompt, completion, [0.0] * len(completion), [0.0] * len(completion),
                               False, "", mask))
    return out


def _targets(rollouts):
    """Per rollout, (the positions of prompt + completion that predict its trained tokens, those tokens)."""
    out = []
    for r in rollouts:
        js = [j for j in range(len(r.completion_ids)) if r.mask is None or r.mask[j]]
        out.append(([len(r.prompt_ids) - 1 + j for j in js], [r.completion_ids[j] for j in js]))
    return out


def _unshared_hidden(model, rollouts, layout):
    """[M, H] hidden states predicting the trained tokens, rollout after rollout, without any sharing."""
    targets = _targets(rollouts)
    if layout == "alone":
        return torch.cat([model(torch.tensor([r.sequence]), return_hidden=True)[0, pos]
                          for r, (pos, _) in zip(rollouts, targets)])
    if layout == "padded":
        T = max(len(r.sequence) for r in rollouts)
        ids = torch.tensor([r.sequence + [0] * (T - len(r.sequence)) for r in rollouts])
        valid = torch.tensor([[1] * len(r.sequence) + [0] * (T - len(r.sequence)) for r in rollouts])
        hidden = model(ids, attention_mask_BT=valid, return_hidden=True)
        return torch.cat([hidden[b, pos] for b, (pos, _) in enumerate(targets)])
    lengths = [len(r.sequence) for r in rollouts]  # "packed": one row, one sequence per rollout
    starts = torch.tensor([0, *lengths]).cumsum(0)
    cu = starts.to(torch.int32)
    hidden = model(torch.tensor([[t for r in rollouts for t in r.sequence]]), cu_seqlens=cu, return_hidden=True)
    return torch.cat([hidden[0, int(s) + torch.tensor(pos)] for s, (pos, _) in zip(starts, targets)])


def _logp64(model, hidden_MH, targets_M):
    """log softmax(hidden W^T)[target], in the test's own float64 arithmetic."""
    return torch.log_softmax(hidden_MH @ model.lm_head.weight.T, -1).gather(-1, targets_M[:, None])[:, 0]


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


CASES = {  # name: (prompt lengths in one batch, G, agent trajectories)
    "G2": ([3, 17, 40, 9], 2, False),
    "G8": ([40, 5], 8, False),
    "agent": ([21, 12], 4, True),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", ["alone", "padded", "packed"])
def test_shared_hidden_logprobs_and_gradients_equal_unshared_in_float64(case, layout):
    prompts, G, agent = CASES[case]
    rollouts = _rollouts(prompts, G, seed=len(prompts) * G, agent=agent)
    targets_M = torch.tensor([t for _, ts in _targets(rollouts) for t in ts])
    weights_M = torch.randn(len(targets_M), generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    model = _model()
    (mb,) = rollout_micro_batches(rollouts, len(rollouts), 0, "cpu", 1)
    assert mb.ids_1N.shape[1] == sum(prompts) + sum(len(r.completion_ids) for r in rollouts)  # each prompt once
    assert (mb.parents >= 0).sum() == len(rollouts) and torch.equal(mb.targets_M, targets_M)
    shared = mb.hidden(model)
    (weights_M * _logp64(model, shared, mb.targets_M)).sum().backward()
    shared_grads = _grads(model)

    model.zero_grad()
    unshared = _unshared_hidden(model, rollouts, layout)
    (weights_M * _logp64(model, unshared, targets_M)).sum().backward()
    torch.testing.assert_close(shared, unshared, rtol=0, atol=1e-12)
    torch.testing.assert_close(shared_grads, _grads(model), rtol=1e-10, atol=1e-12)
    assert shared_grads.abs().max() > 1e-3


@pytest.mark.parametrize("checkpointing", [False, True])
def test_production_fp32_path_equals_unshared_with_lm_head_chunks_shorter_than_a_prompt(monkeypatch, checkpointing):
    """Through Transformer.token_logprobs (the chunked LM-head kernel) at chunks of 16 rows, prompts of 40
    and 33 tokens, mixed with agent trajectories; under activation checkpointing too."""
    monkeypatch.setattr(kernel_common, "CHUNK_ELEMENTS", 16 * VOCAB)
    assert kernel_common.chunk_rows(200, VOCAB, None) == 16
    rollouts = _rollouts([40, 33], 8, seed=7) + _rollouts([26], 4, seed=8, agent=True)
    for i, r in enumerate(rollouts):
        r.prompt_index = i // 8
    targets_M = torch.tensor([t for _, ts in _targets(rollouts) for t in ts])
    weights_M = torch.randn(len(targets_M), generator=torch.Generator().manual_seed(2))
    assert len(targets_M) > 3 * 16  # several chunks

    model = _model(dtype=torch.float32).train()
    model.activation_checkpointing = checkpointing
    (mb,) = rollout_micro_batches(rollouts, len(rollouts), 0, "cpu", 1)
    shared = model.token_logprobs(mb.hidden(model), mb.targets_M)
    (weights_M * shared).sum().backward()
    shared_grads = _grads(model)
    model.zero_grad()
    unshared = model.token_logprobs(_unshared_hidden(model, rollouts, "alone"), targets_M)
    (weights_M * unshared).sum().backward()
    torch.testing.assert_close(shared, unshared, rtol=0, atol=2e-6)
    torch.testing.assert_close(shared_grads, _grads(model), rtol=1e-4, atol=2e-6)

    with torch.no_grad():  # and both equal the float64 computation
        model64 = _model(dtype=torch.float64)
        exact = _logp64(model64, _unshared_hidden(model64, rollouts, "alone"), targets_M).float()
    torch.testing.assert_close(shared.detach(), exact, rtol=0, atol=2e-5)


def _fsdp_worker(rank, param_dtype):
    """Each rank trains its half of the groups, shared and unshared (one rollout per micro-batch group);
    full gradients after the FSDP2 reduce."""
    ad.init()
    rollouts = _rollouts([30, 7, 18, 25], 4, seed=11, agent=False) + _rollouts([19, 28], 4, seed=12, agent=True)
    for i, r in enumerate(rollouts):
        r.prompt_index = i // 4
    mine = [r for r in rollouts if r.prompt_index % 2 == rank]
    report = {}
    for name in ("shared", "unshared"):
        model = ad.parallelize(_model(dtype=torch.float32), param_dtype=param_dtype, activation_checkpointing=True)
        assert all(hasattr(p, "full_tensor") for p in model.parameters())  # sharded
        if name == "unshared":  # the same packing, but no rollout shares its prompt
            rollout_module.prompt_groups = lambda rollouts, rows: [[b] for b in range(len(rows))]
        (mb,) = rollout_micro_batches(mine, len(mine), 0, "cpu", 1)
        logp = model.token_logprobs(mb.hidden(model), mb.targets_M)
        weights = torch.linspace(-1, 1, len(logp))
        ((weights * logp).sum() * ad.world_size()).backward()  # the trainers' scaling against FSDP2's mean
        report[name] = {"grads": torch.cat([ad.full_tensor(p.grad).flatten() for p in model.parameters()]).tolist(),
                        "tokens": mb.ids_1N.shape[1], "logp": logp.detach().tolist()}
    return report


@pytest.mark.slow
@pytest.mark.parametrize("param_dtype", [None, torch.bfloat16])
def test_two_processes_shared_equals_unshared(tmp_path, param_dtype):
    reports = run_ranks(_fsdp_worker, param_dtype, tmp_path=tmp_path)
    for rank in reports:
        assert rank["shared"]["tokens"] < rank["unshared"]["tokens"]  # the prompts were computed once
    shared, unshared = (torch.tensor(reports[0][k]["grads"]) for k in ("shared", "unshared"))
    assert torch.equal(shared, torch.tensor(reports[1]["shared"]["grads"]))  # full gradients, reduced
    if param_dtype is None:
        torch.testing.assert_close(shared, unshared, rtol=1e-4, atol=1e-6)
        for rank in reports:
            torch.testing.assert_close(rank["shared"]["logp"], rank["unshared"]["logp"], rtol=0, atol=2e-6)
    else:  # bf16 compute: sharing moves the result no more than bf16's own rounding does
        assert (shared - unshared).norm() <= 0.05 * unshared.norm()
        for rank in reports:
            gap = (torch.tensor(rank["shared"]["logp"]) - torch.tensor(rank["unshared"]["logp"])).abs()
            assert gap.max() < 0.1


# GRPO end to end

EXAMPLES = task.examples("train")[:64]
KEYS = ("step", "reward_mean", "reward_std", "zero_variance_frac", "completion_len_mean", "tokens", "lr")
CLOSE = ("loss", "kl", "grad_norm", "clip_frac", "entropy")


def _grpo(directory, reward=answer_match, **overrides):
    config = GRPOConfig(**{"output_dir": str(directory), "max_steps": 4, "lr": 1e-4, "prompts_per_step": 4,
                           "num_generations": 4, "max_new_tokens": 10, "micro_batch_size": 8, "seed": 3,
                           "mu": 2, "beta": 0.04, "save_every": 100, **overrides})
    path = model_path("student")
    return GRPO(am.from_pretrained(path), am.Tokenizer.from_pretrained(path), reward, config)


def test_grpo_shared_with_a_resume_mid_rollout_batch_equals_the_unshared_run(tmp_path, monkeypatch):
    tokens = {}
    real_micro = grpo_module.GRPO._micro_batches

    def counting(self, rollouts, kept):
        micro = real_micro(self, rollouts, kept)
        tokens[self.config.output_dir] = tokens.get(self.config.output_dir, 0) + sum(mb.ids_1N.shape[1] for mb in micro)
        return micro

    monkeypatch.setattr(grpo_module.GRPO, "_micro_batches", counting)
    with monkeypatch.context() as unshared:
        unshared.setattr(rollout_module, "prompt_groups", lambda rollouts, rows: [[b] for b in range(len(rows))])
        _grpo(tmp_path / "unshared").train(EXAMPLES)
    expected = read_metrics(tmp_path / "unshared" / "metrics.jsonl")

    cut = _grpo(tmp_path / "shared")
    sigterm_after(cut, 3)
    assert cut.train(EXAMPLES)["interrupted"]
    _grpo(tmp_path / "shared", resume=True).train(EXAMPLES)
    got = read_metrics(tmp_path / "shared" / "metrics.jsonl")
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}
        for k in CLOSE:
            assert abs(a[k] - b[k]) <= 2e-5 * max(1.0, abs(b[k])), (k, a[k], b[k])
    assert all(r["kl"] > 0 for r in got[1:])
    # the shared run computed fewer tokens (3 of its 4 batches: the resume rebuilt one)
    assert tokens[str(tmp_path / "shared")] < 0.75 * tokens[str(tmp_path / "unshared")]


def test_skipping_zero_variance_groups_changes_the_loss_as_documented(tmp_path, monkeypatch):
    """mu = 1, beta = 0: the ratio is 1, so the loss is -sum_t A_t / N. `train` divides the kept groups'
    sum by every token; `skip` by the kept groups' tokens only, and its gradient is `train`'s times
    N_all / N_kept."""
    seen, grads = {}, {}
    real_rollouts, real_score = grpo_module.sample_rollouts, GRPO.score
    monkeypatch.setattr(grpo_module, "sample_rollouts", lambda *a: seen.setdefault("batch", real_rollouts(*a)))
    monkeypatch.setattr(GRPO, "score", lambda self, batch: seen.setdefault("scored", real_score(self, batch)))
    rows = {}
    for mode in ("train", "skip"):
        seen.clear()
        trainer = _grpo(tmp_path / mode, mu=1, beta=0.0, max_steps=1, prompts_per_step=8,
                        max_grad_norm=0, zero_variance_groups=mode)
        monkeypatch.setattr(trainer.optimizer, "step", lambda mode=mode, t=trainer: grads.setdefault(
            mode, torch.cat([p.grad.flatten() for p in t.model.parameters()]).clone()))
        rows[mode] = trainer.step(EXAMPLES[:8])
        rollouts, rewards = seen["batch"].rollouts, torch.tensor(seen["scored"][0], dtype=torch.float64).view(8, 4)
    flat = (rewards == rewards[:, :1]).all(1)
    assert 0 < flat.sum() < 8, "the case needs both kinds of groups"
    adv = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
    lengths = torch.tensor([len(r.completion_ids) for r in rollouts], dtype=torch.float64).view(8, 4)
    numerator = -(adv * lengths).sum().item()
    n_all, n_kept = lengths.sum().item(), lengths[~flat].sum().item()
    assert rows["train"]["zero_variance_frac"] == rows["skip"]["zero_variance_frac"] == flat.float().mean().item()
    assert rows["train"]["loss"] == pytest.approx(numerator / n_all, abs=1e-6)
    assert rows["skip"]["loss"] == pytest.approx(numerator / n_kept, abs=1e-6)
    assert rows["skip"]["trained_tokens"] == n_kept and rows["train"]["trained_tokens"] == n_all
    assert rows["skip"]["tokens"] == rows["train"]["tokens"] == n_all  # sampled tokens keep their meaning
    torch.testing.assert_close(grads["skip"], grads["train"] * (n_all / n_kept), rtol=1e-4, atol=1e-7)


def test_a_step_whose_groups_are_all_skipped_leaves_the_weights(tmp_path):
    trainer = _grpo(tmp_path, reward=lambda prompts, completions, **_: [1.0] * len(completions), mu=1, max_steps=1,
                    zero_variance_groups="skip")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    row = trainer.step(EXAMPLES[:4])
    assert row["zero_variance_frac"] == 1.0 and row["trained_tokens"] == 0 and row["tokens"] > 0
    assert trainer.step_count == 1 and row["loss"] == 0.0
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters()))


def test_skip_with_mu_2_resumes_mid_rollout_batch_exactly(tmp_path):
    """The resume state of a rollout batch whose zero-variance groups were left out (no micro-batch holds
    them) restores the same kept rollouts: the rows are the uninterrupted run's."""
    settings = dict(zero_variance_groups="skip", prompts_per_step=8)
    _grpo(tmp_path / "straight", **settings).train(EXAMPLES)
    expected = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    cut = _grpo(tmp_path / "cut", **settings)
    sigterm_after(cut, 3)
    assert cut.train(EXAMPLES)["interrupted"] and cut.rollout_batch.inner == 1
    assert len(cut.rollout_batch.kept) < len(cut.rollout_batch.rollouts)  # groups were skipped in the cut batch
    _grpo(tmp_path / "cut", resume=True, **settings).train(EXAMPLES)
    got = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    keys = (*KEYS, "loss", "kl", "grad_norm", "trained_tokens")
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in expected]


@pytest.mark.parametrize("parents, message", [([-1, 0, 1], "without a parent of its own"), ([-1, 2, -1], "earlier"),
                                              ([-1, 0], "for each of the 3 sequences"), ([-2, 0, 0], "or -1")])
def test_parents_that_name_no_valid_prefix_are_refused(parents, message):
    model = _model(dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        model(torch.arange(1, 10)[None], cu_seqlens=torch.tensor([0, 3, 6, 9], dtype=torch.int32),
              parents=torch.tensor(parents))


def test_an_empty_completion_adds_no_sequence_and_an_empty_prompt_is_refused():
    rollouts = _rollouts([6], 3, seed=5)
    rollouts[1].completion_ids, rollouts[1].logprobs, rollouts[1].sampled_logprobs = [], [], []
    (mb,) = rollout_micro_batches(rollouts, 3, 0, "cpu", 1)
    assert mb.parents.tolist() == [-1, 0, 0] and mb.seq_M.unique().tolist() == [0, 2]
    rollouts[0].prompt_ids = []
    with pytest.raises(ValueError, match="empty prompt"):
        rollout_micro_batches(rollouts[:1], 1, 0, "cpu", 1)
