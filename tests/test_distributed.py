"""The training substrate under FSDP2 with 2 gloo processes: the loop every trainer runs on one sharded model.

sample (before any forward) -> forward to hidden states -> model.token_logprobs -> backward -> AdamW step,
twice, on a model loaded shard by shard (`ad.load_pretrained`), compared with the same loop on the
unsharded model in the same process; then the same loop under bf16 mixed precision, HSDP, prompts split
over the ranks, and the HF export written from both ranks.
"""

import pytest
import torch

import atlas.model as am
from atlas.sampler import Sampler, SamplingParams
from tests.multiproc import run_ranks
from tests.tiny import hf_model, save_hf

PROMPTS = [[5, 9, 31, 2], [7, 7, 100, 42, 13, 8, 250], [3, 1, 4, 1, 5], [60, 61]]
SEEDS = [11, 22, 33, 44]
PARAMS = SamplingParams(max_new_tokens=8, temperature=1.0, n=2)


def _fsdp_settings(model):
    """Each FSDP module's (reshard-after-forward, auto) state: private, read only to verify the sampler."""
    from torch.distributed.fsdp import FSDPModule

    out = []
    for m in model.modules():
        if isinstance(m, FSDPModule):
            state = m._get_fsdp_state()
            group = state._fsdp_param_group
            out.append((None if group is None else group.post_forward_mesh_info is not None,
                        state._auto_reshard_after_forward))
    return out


def _batch(completions, rank, world):
    """This rank's share of the sequences (prompt + completion), targets masked to the completion."""
    rows = [c for i, c in enumerate(completions) if i % world == rank]
    T = max(len(PROMPTS[c.prompt_index]) + len(c.token_ids) for c in completions)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    targets = torch.full((len(rows), T), -100)
    for b, c in enumerate(rows):
        seq = PROMPTS[c.prompt_index] + c.token_ids
        ids[b, :len(seq)] = torch.tensor(seq)
        p = len(PROMPTS[c.prompt_index])
        targets[b, p - 1:len(seq) - 1] = torch.tensor(c.token_ids)
    total = sum(len(c.token_ids) for c in completions)
    return ids, targets, total


def _train(model, completions, rank, world, steps=2):
    """Two AdamW steps of a token-mean NLL over every rank's sequences; returns losses and full gradients."""
    import atlas.distributed as ad

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, targets, total = _batch(completions, rank, world)
    losses, grads = [], []
    for _ in range(steps):
        hidden = model(ids, return_hidden=True)
        logp = model.token_logprobs(hidden, targets, 0.7)
        # normalised by the global token count; FSDP averages gradients over ranks, so scale by the world size
        loss = -(logp.sum() / total) * world
        loss.backward()
        losses.append(ad.all_reduce(loss.detach() / world) if world > 1 else loss.detach())
        grads.append({n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                      for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad()
    return losses, grads


def _worker(rank, ckpt, out):
    import atlas.distributed as ad

    ad.init()
    ad.init()  # idempotent
    world = ad.world_size()
    report = {}
    ref = am.from_pretrained(ckpt)
    ref_outs = Sampler(ref).generate(PROMPTS, PARAMS, prompt_seeds=SEEDS)
    ref_losses, ref_grads = _train(ref, ref_outs, 0, 1)

    # fp32 FSDP2 with activation checkpointing: generation comes first, before any forward
    model = ad.load_pretrained(ckpt, activation_checkpointing=True)
    before = _fsdp_settings(model)
    outs = Sampler(model).generate(PROMPTS, PARAMS, prompt_seeds=SEEDS)
    report["settings_kept"] = _fsdp_settings(model) == before
    report["still_sharded"] = all(hasattr(p, "full_tensor") for p in model.parameters())
    report["same_rollouts"] = [o.token_ids for o in outs] == [o.token_ids for o in ref_outs]
    report["rollout_logprob_gap"] = max(abs(a - b) for o, r in zip(outs, ref_outs)
                                        for a, b in zip(o.logprobs, r.logprobs))
    # prompts split over the ranks, each with its global seeds, reproduce the 1-process rollouts
    mine = [i for i in range(len(PROMPTS)) if i % world == rank]
    local = Sampler(model).generate([PROMPTS[i] for i in mine], PARAMS, prompt_seeds=[SEEDS[i] for i in mine])
    gathered = {(mine[o.prompt_index], j % PARAMS.n): o.token_ids for j, o in enumerate(local)}
    merged = {}
    for part in ad.all_gather_object(gathered):
        merged.update(part)
    report["split_equals_whole"] = all(
        merged[(o.prompt_index, j % PARAMS.n)] == o.token_ids for j, o in enumerate(ref_outs))

    losses, grads = _train(model, outs, rank, world)
    report["loss_gap"] = max(abs(float(a - b)) for a, b in zip(losses, ref_losses))
    report["grad_gap"] = [max((g[n] - rg[n]).abs().max().item() for n in g) for g, rg in zip(grads, ref_grads)]
    # after a forward the root stays unsharded (FSDP's default), so the README's direct head call works too
    hidden = model(torch.tensor([PROMPTS[0]]), return_hidden=True)
    from atlas.kernels import linear_token_logprobs

    linear_token_logprobs(hidden[0], model.lm_head.weight, torch.tensor(PROMPTS[0]))
    with torch.no_grad():
        report["logits"] = model(torch.tensor([PROMPTS[1]]))[0].tolist()
    am.save_pretrained(model, out / "hf")

    # bf16 mixed precision (fp32 master weights, fp32 reduce): generate first, then train twice
    mp_model = ad.load_pretrained(ckpt, param_dtype=torch.bfloat16)
    before = _fsdp_settings(mp_model)
    mp_outs = Sampler(mp_model).generate(PROMPTS, PARAMS, prompt_seeds=SEEDS)
    report["mp_settings_kept"] = _fsdp_settings(mp_model) == before
    with ad.gathered(mp_model):  # as inside generate: the cache takes the dtype FSDP computes in
        report["mp_kv_dtype"] = str(Sampler(mp_model)._kv_cache(1, 8).k[0].dtype)
    mp_losses, mp_grads = _train(mp_model, outs, rank, world)
    report["mp_master_dtype"] = str(next(mp_model.parameters()).dtype)
    report["mp_finite"] = all(torch.isfinite(torch.stack(mp_losses)).tolist())
    # bf16 gradients point where the fp32 ones do
    flat = torch.cat([mp_grads[0][n].flatten() for n in ref_grads[0]])
    flat_ref = torch.cat([ref_grads[0][n].flatten() for n in ref_grads[0]])
    report["mp_grad_cosine"] = torch.nn.functional.cosine_similarity(flat, flat_ref, dim=0).item()
    report["mp_rollouts"] = len(mp_outs)

    # HSDP: two replicas of one shard each
    hsdp = ad.load_pretrained(ckpt, ad.device_mesh(dp_replicate=2))
    _, hsdp_grads = _train(hsdp, outs, rank, world, steps=1)
    report["hsdp_grad_gap"] = max((hsdp_grads[0][n] - ref_grads[0][n]).abs().max().item() for n in ref_grads[0])
    return report


@pytest.mark.slow
def test_fsdp2_training_loop_matches_one_process(tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = save_hf(hf_model("qwen2", seed=2), tmp_path / "ckpt")
    reports = run_ranks(_worker, str(ckpt), tmp_path, tmp_path=tmp_path)
    for report in reports:
        assert report["settings_kept"] and report["still_sharded"] and report["mp_settings_kept"]
        assert report["same_rollouts"] and report["rollout_logprob_gap"] <= 1e-5
        assert report["loss_gap"] <= 1e-5 and max(report["grad_gap"]) <= 1e-5, report["grad_gap"]
        assert report["split_equals_whole"]
        assert report["mp_kv_dtype"] == "torch.bfloat16" and report["mp_master_dtype"] == "torch.float32"
        assert report["mp_finite"] and report["mp_grad_cosine"] > 0.99 and report["mp_rollouts"] == 8
        assert report["hsdp_grad_gap"] <= 1e-5
    # the export written from two ranks loads in transformers with the sharded model's logits
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        logits = hf(torch.tensor([PROMPTS[1]])).logits[0]
    assert (logits - torch.tensor(report["logits"])).abs().max().item() <= 1e-5
