"""Resume state with torch.distributed.checkpoint (DCP), and the consolidated HF export for serving.

    output_dir/
      config.yaml                   the resolved config of the run
      checkpoints/step_00000012/    one resume state per save:
          .metadata, __*_*.distcp     DCP shards of model and optimizer state (every rank writes its own),
                                      and of the frozen models that move during a run (a synced reference)
          trainer.json                step, data position, counters, the world size (global rank 0)
          extra.<rank>.json           each rank's trainer extras (GRPO's rollouts mid mu-cycle are its own)
          rng.<rank>.pt               each rank's RNG states (torch CPU and CUDA, python's random)
          config.yaml                 the config it was saved under
          COMPLETE                    written last: a directory without it is an interrupted save
      hf/                           the HF export: weights, config.json, tokenizer, generation_config.json

A save goes to `checkpoints/.step_N.tmp`, every rank writing its DCP shards there; after a barrier global
rank 0 writes the rest, fsyncs, and renames it to `step_N`, so `latest_state` (the newest directory with
COMPLETE) never picks a partial one; the `keep` newest are kept. On load the model and optimizer are
restored through DCP's state-dict helpers, which reshard as needed (a run may resume on another world
size; only the data position and RNG streams are then per-rank approximations, and a trainer's extras
must be the same on every rank, else it is a ValueError). The HF export is
`save_pretrained` (atomic, rank 0 writes after gathering) plus `generation_config.json`, whose stop tokens
include the chat template's end-of-turn token, so vLLM and transformers stop where the model was trained
to. Multi-node runs need `output_dir` on a filesystem every node sees (DCP's requirement).

Left out: asynchronous checkpointing, object-store paths, optimizer-state export to HF format.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

import atlas.distributed as ad
from atlas.config import save_config
from atlas.model import Transformer, save_pretrained
from atlas.model.tokenizer import stop_ids

STEP_PREFIX = "step_"


def state_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{STEP_PREFIX}{step:08d}"


def latest_state(output_dir: str | Path) -> Path | None:
    """The newest complete resume state under output_dir, or None."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith(STEP_PREFIX) and (p / "COMPLETE").exists())
    return done[-1] if done else None


def save_state(output_dir: str | Path, step: int, model: Transformer, optimizer: torch.optim.Optimizer,
               trainer_state: dict[str, Any], config: Any, keep: int = 2,
               others: dict[str, nn.Module] | None = None, rank_state: dict[str, Any] | None = None) -> Path:
    """Write the resume state of `step` (every rank must call it); returns its directory. `others`: more
    models by name (not trained here, but moving: GRPO's synced reference), saved beside the policy;
    `rank_state`: this rank's JSON-able extras."""
    final = state_dir(output_dir, step)
    tmp = final.parent / f".{final.name}.tmp"
    if ad.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ad.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd, **{k: get_model_state_dict(m) for k, m in (others or {}).items()}}
    with _one_process_is_fine():
        dcp.save(state, checkpoint_id=str(tmp), no_dist=not torch.distributed.is_initialized())
    torch.save(_rng_state(), tmp / f"rng.{ad.rank()}.pt")
    (tmp / f"extra.{ad.rank()}.json").write_text(json.dumps(rank_state or {}) + "\n")
    ad.barrier()
    if ad.is_main():
        (tmp / "trainer.json").write_text(json.dumps({"step": step, "world_size": ad.world_size(), **trainer_state},
                                                     indent=2) + "\n")
        save_config(config, tmp / "config.yaml")
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        (tmp / "COMPLETE").write_text(f"{step}\n")
        if final.exists():  # a run that resumed before this step and reached it again
            shutil.rmtree(final)
        os.rename(tmp, final)
        complete = sorted(p for p in final.parent.iterdir() if p.name.startswith(STEP_PREFIX))
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    ad.barrier()
    return final


def load_state(path: str | Path, model: Transformer, optimizer: torch.optim.Optimizer,
               others: dict[str, nn.Module] | None = None) -> dict[str, Any]:
    """Restore model, optimizer, `others` (as saved) and this rank's RNG from a resume state; returns
    trainer.json's content, with this rank's extras under "rank_state"."""
    path = Path(path)
    if not (path / "COMPLETE").exists():
        raise ValueError(f"{path} is not a complete resume state (no COMPLETE marker): an interrupted save?")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    others = others or {}
    state = {"model": model_sd, "optim": optim_sd, **{k: get_model_state_dict(m) for k, m in others.items()}}
    with _one_process_is_fine():
        dcp.load(state, checkpoint_id=str(path), no_dist=not torch.distributed.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for key, m in others.items():
        set_model_state_dict(m, state[key])
    rng = path / f"rng.{ad.rank()}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=True))
    state = json.loads((path / "trainer.json").read_text())
    saved = state.pop("world_size")
    extras = [json.loads((path / f"extra.{r}.json").read_text()) for r in range(saved)]
    if saved == ad.world_size():
        state["rank_state"] = extras[ad.rank()]
    elif all(e == extras[0] for e in extras):
        state["rank_state"] = extras[0]
    else:
        raise ValueError(f"{path} was saved by {saved} ranks whose trainer states differ (GRPO's rollouts in the "
                         f"middle of a mu-cycle): resume it on {saved} ranks, not {ad.world_size()}, or from a state "
                         "saved between cycles")
    return state


def export_hf(model: Transformer, out_dir: str | Path, tokenizer=None, dtype: torch.dtype | None = None,
              extra_files: dict[str, str] | None = None) -> Path:
    """The serving checkpoint: save_pretrained plus generation_config.json (every rank must call it)."""
    generation = {"eos_token_id": stop_ids(model.config.eos_token_id, tokenizer)}
    if model.config.bos_token_id is not None:
        generation["bos_token_id"] = model.config.bos_token_id
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else getattr(tokenizer, "pad_token_id",
                                                                                           None)
    if pad is not None:
        generation["pad_token_id"] = pad
    files = {"generation_config.json": json.dumps(generation, indent=2) + "\n", **(extra_files or {})}
    return save_pretrained(model, out_dir, tokenizer=tokenizer, dtype=dtype, extra_files=files)


@contextlib.contextmanager
def _one_process_is_fine():
    """DCP warns at every save and load without a process group; one process is a supported case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*unavailable or uninitialized")
        yield


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
