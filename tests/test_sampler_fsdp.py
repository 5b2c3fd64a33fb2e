"""The sampler on an FSDP2-sharded model (2 gloo processes on CPU) generates what the unsharded model does."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import atlas.model as am
from atlas.sampler import Sampler, SamplingParams
from tests.tiny import hf_model, save_hf

PROMPTS = [[5, 9, 31, 2], [7, 7, 100, 42, 13, 8, 250]]
PARAMS = [SamplingParams(max_new_tokens=10, temperature=0), SamplingParams(max_new_tokens=10, temperature=1.0,
                                                                            n=2, seed=4)]


def _generate(model):
    return [[(o.token_ids, o.logprobs) for o in Sampler(model).generate(PROMPTS, p)] for p in PARAMS]


def _worker(rank, world, port, ckpt, out):
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        model = am.from_pretrained(ckpt)
        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
        local = sum(p.to_local().numel() for p in model.parameters())
        # count FSDP all-gathers: generation gathers each of the 3 FSDP modules once per generate call
        from torch.distributed.fsdp._fully_shard import _fsdp_param_group as group_mod

        gathers, real = [], group_mod.foreach_all_gather
        group_mod.foreach_all_gather = lambda *a, **k: gathers.append(1) or real(*a, **k)
        results = _generate(model)
        group_mod.foreach_all_gather = real
        assert len(gathers) == 3 * len(PARAMS), len(gathers)
        # parameters are sharded again afterwards, and an ordinary FSDP forward still works
        assert sum(p.to_local().numel() for p in model.parameters()) == local
        with torch.no_grad():
            model(torch.tensor([PROMPTS[0]]))
        with open(f"{out}.{rank}", "w") as f:
            json.dump(results, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_sharded_generation_matches_unsharded(tmp_path):
    ckpt = save_hf(hf_model("qwen2", seed=2), tmp_path / "ckpt")
    expected = json.loads(json.dumps(_generate(am.from_pretrained(ckpt))))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.json"
    context = mp.start_processes(_worker, args=(2, port, str(ckpt), str(out)), nprocs=2, join=False,
                                 start_method="spawn")
    # Each rank writes its results only after every check in it passed, so the files are the verdict; exit
    # codes are only reported. Under heavy load a rank once died with SIGABRT from a C++ thread ("terminate
    # called without an active exception"), not reproduced since in 30 runs; a teardown crash after the
    # work must not fail the test, a crash before it does (its file is missing).
    for process in context.processes:
        process.join(timeout=300)
        if process.is_alive():
            process.kill()
    codes = [p.exitcode for p in context.processes]
    assert all((tmp_path / f"out.json.{r}").exists() for r in range(2)), f"a rank failed; exit codes {codes}"
    got = json.loads((tmp_path / "out.json.0").read_text())
    assert got == json.loads((tmp_path / "out.json.1").read_text())  # both ranks generated the same
    for exp_p, got_p in zip(expected, got):
        for (exp_ids, exp_lp), (got_ids, got_lp) in zip(exp_p, got_p):
            assert got_ids == exp_ids
            assert torch.allclose(torch.tensor(got_lp), torch.tensor(exp_lp), atol=1e-5)
