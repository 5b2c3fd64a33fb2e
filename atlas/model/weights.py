"""Hugging Face checkpoints in and out: safetensors only, HF parameter names, atomic sharded writes.

Names: an atlas parameter `layers.0.mlp.up_proj.weight` is `model.layers.0.mlp.up_proj.weight` in HF;
`lm_head.weight` is the same in both and absent from checkpoints with tied embeddings.

Loading builds the model on the meta device and assigns tensors read straight from the safetensors files
(cast to the target dtype on the target device), so parameters are allocated once. Pickle checkpoints
(`.bin`, `.pt`) are refused: unpickling runs arbitrary code.

Left out: DTensor/FSDP-sharded saving (checkpoint.py consolidates before calling save_pretrained),
quantised checkpoints, generation_config.json.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
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


def from_pretrained(
    path_or_hub_id: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Transformer:
    """Load an HF-format Llama/Qwen2/Qwen3 checkpoint.

    dtype defaults to the checkpoint's, as transformers' torch_dtype="auto" reads it: config.json's
    `torch_dtype`/`dtype`, else the first floating-point tensor's stored dtype.
    """
    directory = resolve(path_or_hub_id)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise ValueError(f"no config.json in {directory}")
    config = ModelConfig.from_hf(json.loads(config_path.read_text()))
    device = torch.device(device if device is not None else "cpu")
    files = weight_files(directory)

    with torch.device("meta"):
        model = Transformer(config)
    expected = {hf_name(n): p for n, p in model.named_parameters()}  # tied weights appear once
    # first pass reads only headers, so a bad checkpoint fails before any tensor is allocated
    location: dict[str, Path] = {}
    unexpected, mismatched = [], []
    stored_dtype = None
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key.endswith(_IGNORED_SUFFIXES):
                    continue
                if key not in expected:
                    # a tied checkpoint may still store lm_head.weight: it is the embedding, nothing is lost
                    if not (config.tie_word_embeddings and key == "lm_head.weight"):
                        unexpected.append(key)
                    continue
                view = f.get_slice(key)
                shape = tuple(view.get_shape())
                if shape != tuple(expected[key].shape):
                    mismatched.append(f"{key}: checkpoint {shape} vs model {tuple(expected[key].shape)}")
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

    dtype = dtype or config.dtype or stored_dtype or torch.float32
    by_name = {hf_name(n): n for n, _ in model.named_parameters()}
    params = {}
    for file in files:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for key in (k for k, v in location.items() if v == file):
                params[by_name[key]] = f.get_tensor(key).to(dtype)
    model.load_state_dict(params, strict=False, assign=True)
    model.tie_weights()  # assign=True replaced the shared Parameter: share it again
    model.init_buffers(device)
    return model.eval()


def save_pretrained(
    model: Transformer,
    out_dir: str | os.PathLike,
    tokenizer=None,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Write config.json + safetensors (sharded with an index above `max_shard_bytes`) atomically.

    The directory appears complete or not at all: everything is written to a sibling temp directory that
    is renamed into place (an existing `out_dir` is replaced). `tokenizer` is an atlas Tokenizer whose
    files are copied alongside, so the directory serves as is in vLLM/transformers.
    """
    out = Path(out_dir).expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        config = model.config.to_hf()
        config["torch_dtype"] = str(model.dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _write_weights(model, tmp, max_shard_bytes)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_weights(model: Transformer, directory: Path, max_shard_bytes: int) -> None:
    # named_parameters() yields a tied weight once (as embed_tokens), which is the HF layout
    tensors = {hf_name(n): p.detach().contiguous().cpu() for n, p in model.named_parameters()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(directory / SINGLE_FILE), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / fname), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
