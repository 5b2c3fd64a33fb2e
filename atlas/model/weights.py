"""Hugging Face checkpoints in and out: safetensors only, HF parameter names, atomic sharded writes.

Names: an atlas parameter `layers.0.mlp.up_proj.weight` is `model.layers.0.mlp.up_proj.weight` in HF;
`lm_head.weight` is the same in both and absent from checkpoints with tied embeddings.

Loading builds the model on the meta device and assigns tensors read straight from the safetensors files
(cast to the target dtype on the target device), so parameters are allocated once. `open_checkpoint`
validates a checkpoint against its config from the file headers alone and then yields its tensors one at
a time, which is also how `atlas.distributed.load_pretrained` fills a sharded model. Pickle checkpoints
(`.bin`, `.pt`) are refused: unpickling runs arbitrary code.

Saving (`save_pretrained`) is atomic, durable and streamed:
- atomic: the new checkpoint is written to a sibling temp directory and swapped with the old one in one
  step (Linux `renameat2(RENAME_EXCHANGE)`), then the old one is deleted, so at every instant `out_dir` is
  the old complete checkpoint or the new complete one, and stays a real directory (`cp -r`, `rsync`
  and serving see plain files). Where the exchange is unavailable (not Linux, or a filesystem without
  it) the old directory is renamed aside, then the new one in: a crash between the two renames leaves
  the old checkpoint complete at `.<name>.old-*` beside it;
- durable: every file and the directories are fsynced before the swap;
- streamed: tensors are copied to the host one shard (`max_shard_bytes`) at a time, so host memory stays
  near one shard, not the whole model;
- FSDP2: called on every rank, each sharded parameter is gathered in full (`DTensor.full_tensor`, a
  collective), rank 0 writes, the others wait at a barrier.

Left out: quantised checkpoints, pickle formats (generation_config.json: atlas.checkpoint.export_hf).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from atlas.model.config import ModelConfig
from atlas.model.transformer import Transformer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# What a hub download fetches: weights, configs and every tokenizer file format atlas reads.
HUB_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.jinja", "*.txt", "*.model"]
# Derived tensors some older checkpoints carry; atlas recomputes them.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def resolve(path_or_hub_id: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub id, fetched (or found in the cache) by huggingface_hub."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file: pass the checkpoint's directory")
    name = str(path_or_hub_id)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ValueError(f"{name} is not a directory (and does not look like a hub id 'org/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # the hub client raises many types; the user needs the id and the cause
        offline = " (HF_HUB_OFFLINE is set: only the local cache was searched)" if _offline() else ""
        raise ValueError(
            f"{name!r} is not a local directory and could not be fetched from the Hugging Face hub{offline}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hf_name(name: str) -> str:
    return name if name.startswith("lm_head.") else "model." + name


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, from its index when sharded."""
    index = directory / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [directory / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise ValueError(f"{index} lists shards that are not in {directory}: {missing}")
        return files
    if (directory / SINGLE_FILE).exists():
        return [directory / SINGLE_FILE]
    loose = sorted(directory.glob("*.safetensors"))
    if loose:
        return loose
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise ValueError(
            f"{directory} holds only pickle weights ({', '.join(pickles)}); atlas loads safetensors only, because "
            "unpickling runs arbitrary code. Convert once with transformers: "
            "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
        )
    raise ValueError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")


@dataclass
class Checkpoint:
    """A validated HF checkpoint: its config and where each of the model's tensors is stored."""

    directory: Path
    config: ModelConfig
    location: dict[str, Path]  # HF tensor name -> file
    stored_dtype: torch.dtype | None

    @property
    def dtype(self) -> torch.dtype:
        """The default load dtype, as transformers' torch_dtype="auto" reads it: config.json's
        `torch_dtype`/`dtype`, else the first floating-point tensor's stored dtype. The config carries it
        (`ModelConfig.torch_dtype`), so a model always knows the dtype its checkpoint came in: the trainers
        export in it by default, whatever dtype they trained in."""
        return self.config.dtype or self.stored_dtype or torch.float32

    def tensors(self, device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
        """(atlas parameter name, stored tensor on `device`), one tensor at a time, file by file."""
        for file in sorted(set(self.location.values())):
            with safe_open(str(file), framework="pt", device=str(device)) as f:
                for key in (k for k, v in self.location.items() if v == file):
                    yield atlas_name(key), f.get_tensor(key)


def atlas_name(hf: str) -> str:
    return hf if hf.startswith("lm_head.") else hf.removeprefix("model.")


def open_checkpoint(path_or_hub_id: str | os.PathLike) -> Checkpoint:
    """Resolve and validate a checkpoint from its config and the safetensors headers (no tensor is read):
    missing keys, unexpected keys and shape mismatches are listed in one ValueError."""
    directory = resolve(path_or_hub_id)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise ValueError(f"no config.json in {directory}")
    config = ModelConfig.from_hf(json.loads(config_path.read_text()))
    with torch.device("meta"):
        expected = {hf_name(n): tuple(p.shape) for n, p in Transformer(config).named_parameters()}
    location: dict[str, Path] = {}
    unexpected, mismatched = [], []
    stored_dtype = None
    for file in weight_files(directory):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key.endswith(_IGNORED_SUFFIXES):
                    continue
                if key not in expected:  # tied weights appear once in named_parameters
                    # a tied checkpoint may still store lm_head.weight: it is the embedding, nothing is lost
                    if not (config.tie_word_embeddings and key == "lm_head.weight"):
                        unexpected.append(key)
                    continue
                view = f.get_slice(key)
                shape = tuple(view.get_shape())
                if shape != expected[key]:
                    mismatched.append(f"{key}: checkpoint {shape} vs model {expected[key]}")
                    continue
                stored_dtype = stored_dtype or _SAFETENSORS_DTYPES.get(view.get_dtype())
                location[key] = file
    missing = sorted(set(expected) - set(location))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"checkpoint {directory} does not match its config ({config.model_type}):"
            + (f"\n  missing: {missing}" if missing else "")
            + (f"\n  unexpected: {sorted(unexpected)}" if unexpected else "")
            + (f"\n  shape mismatch: {mismatched}" if mismatched else "")
        )
    if config.torch_dtype is None and stored_dtype is not None:
        config.torch_dtype = str(stored_dtype).removeprefix("torch.")
    return Checkpoint(directory, config, location, stored_dtype)


def from_pretrained(
    path_or_hub_id: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transformer:
    """Load an HF-format Llama/Qwen2/Qwen3 checkpoint (dtype: the checkpoint's by default, see
    `Checkpoint.dtype`). For a sharded model under torchrun, use atlas.distributed.load_pretrained."""
    ckpt = open_checkpoint(path_or_hub_id)
    device = torch.device(device if device is not None else "cpu")
    dtype = dtype or ckpt.dtype
    with torch.device("meta"):
        model = Transformer(ckpt.config)
    params = {name: t.to(dtype) for name, t in ckpt.tensors(device)}
    model.load_state_dict(params, strict=False, assign=True)
    model.tie_weights()  # assign=True replaced the shared Parameter: share it again
    model.init_buffers(device)
    return model.eval()


def save_pretrained(
    model: Transformer,
    out_dir: str | os.PathLike,
    tokenizer=None,
    max_shard_bytes: int = 5 * 2**30,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write config.json + safetensors (sharded with an index above `max_shard_bytes`) atomically; see the
    module docstring for the guarantees. `tokenizer` (an atlas Tokenizer) is written alongside, so the
    directory serves as is in vLLM/transformers; `extra_files` (name -> text) too, inside the same swap.
    `dtype` casts the weights on the way out (e.g. bf16 for serving from fp32 master weights); by default
    they keep the parameters' dtype. On an FSDP2 model every rank must call it (the parameters are
    gathered collectively); every rank returns the path."""
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    writer = not distributed or dist.get_rank() == 0
    out = Path(out_dir).expanduser().absolute()
    params = list(model.named_parameters())  # a tied weight appears once (as embed_tokens): the HF layout
    dtype = dtype or _local(params[0][1]).dtype
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        if writer:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            config = model.config.to_hf()
            config["torch_dtype"] = str(dtype).removeprefix("torch.")
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
        _write_weights(params, tmp, max_shard_bytes, dtype, writer)
        if writer:
            _fsync_tree(tmp)
            _swap_into_place(tmp, out)
    except BaseException:
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if distributed:
            dist.barrier()
    return out


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "full_tensor") else p


def _write_weights(params: list[tuple[str, torch.Tensor]], directory: Path, max_shard_bytes: int,
                   dtype: torch.dtype, writer: bool) -> None:
    """Plan the shards from shapes alone, then materialise one shard at a time on the host."""
    nbytes = dtype.itemsize
    plan: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, p in params:
        b = p.numel() * nbytes
        if plan[-1] and size + b > max_shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append((hf_name(name), p))
        size += b
    metadata = {"format": "pt"}
    names = [SINGLE_FILE] if len(plan) == 1 else [
        f"model-{i:05d}-of-{len(plan):05d}.safetensors" for i in range(1, len(plan) + 1)]
    weight_map = {}
    for fname, shard in zip(names, plan):
        tensors = {}
        for key, p in shard:
            # a DTensor is gathered in full by every rank (a collective); only the writer keeps it
            full = p.detach().full_tensor() if hasattr(p, "full_tensor") else p.detach()
            if writer:
                tensors[key] = full.to(device="cpu", dtype=dtype).contiguous()
        if writer:
            save_file(tensors, str(directory / fname), metadata=metadata)
            weight_map.update(dict.fromkeys(tensors, fname))
        del tensors
    if writer and len(plan) > 1:
        total = sum(p.numel() for _, p in params) * nbytes
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(new: Path, out: Path) -> None:
    """Make `new` be `out`: one atomic exchange where the OS has it, else two renames (see the docstring)."""
    if not out.exists():
        os.rename(new, out)
    elif not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory: pass a directory path for the checkpoint")
    elif _exchange(new, out):
        shutil.rmtree(new)  # `new` now holds the old checkpoint
    else:
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        os.rename(new, out)
        shutil.rmtree(old)
    _fsync_dir(out.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: this kernel or filesystem has no exchange
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE) failed: {os.strerror(err)}")
