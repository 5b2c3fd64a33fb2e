"""Run a test's function on 2 gloo processes as torchrun would start them, and collect each rank's report.

    reports = run_ranks(_worker, ckpt_dir, tmp_path=tmp_path)     # _worker(rank, *args) -> JSON-able dict

Each rank gets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT on a free loopback
port) and one CPU thread; its report is written to a file only after all of its work, so the files are
the verdict and exit codes are only reported: a gloo teardown crash after the work (seen once under heavy
load: SIGABRT from a C++ thread) must not fail a test, a crash before it does (its report is missing).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp


def run_ranks(fn: Callable[..., dict], *args: Any, tmp_path: Path, world: int = 2, timeout: float = 300) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(_entry, args=(world, port, fn, args, str(tmp_path)), nprocs=world, join=False,
                                 start_method="spawn")
    for process in context.processes:
        process.join(timeout=timeout)
        if process.is_alive():
            process.kill()
    codes = [p.exitcode for p in context.processes]
    paths = [tmp_path / f"report.{rank}.json" for rank in range(world)]
    assert all(p.exists() for p in paths), f"a rank failed before reporting; exit codes {codes}"
    return [json.loads(p.read_text()) for p in paths]


def _entry(rank: int, world: int, port: int, fn: Callable[..., dict], args: tuple, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch

    import atlas.distributed as ad

    torch.set_num_threads(1)
    try:
        report = fn(rank, *args)
        Path(out, f"report.{rank}.json").write_text(json.dumps(report))
    finally:
        ad.shutdown()
