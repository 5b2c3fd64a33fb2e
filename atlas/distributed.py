"""torchrun in, FSDP2 out: the process group, the device mesh, sharding, sharded loading, rank-aware logging.

    import atlas.distributed as ad
    ad.init()                                      # torchrun's env -> process group; plain python: none
    mesh = ad.device_mesh()                        # 1-D ("dp_shard",), or ("dp_replicate", "dp_shard")
    ad.parallelize(model, mesh, param_dtype=torch.bfloat16, activation_checkpointing=True)
    model = ad.load_pretrained(path, mesh, param_dtype=torch.bfloat16)   # HF checkpoint, sharded as read
    with ad.gathered(model): ...                   # generation: parameters unsharded once, blocks hook-free

The one file that knows FSDP2: the rest of atlas asks it (`is_sharded`, `gathered`, `root_unsharded`,
`copy_model`, `local_tensor`, `full_tensor`) and never reads FSDP or DTensor internals itself.

Processes: `init()` makes a process group exactly when torchrun's variables (RANK, WORLD_SIZE) are set:
nccl for CUDA tensors with gloo beside it for CPU ones when CUDA is available, gloo alone otherwise;
each rank then computes on cuda:LOCAL_RANK (or the CPU). Under plain `python` there is no process group
and every function here still works, as the one-process case (world size 1, rank 0,
collectives are identities, `device_mesh()` is None). A second call, or a group the caller made, is fine.

Sharding (torchtitan's layout): `parallelize` applies `fully_shard` to every decoder block, then to the
root (embeddings, final norm, LM head), with a `MixedPrecisionPolicy(param_dtype, reduce_dtype)` when a
param dtype is given: parameters stay sharded in their own dtype (fp32 master weights), are all-gathered
and computed with in `param_dtype`, and gradients are reduce-scattered in `reduce_dtype`. A 2-D mesh
(dp_replicate x dp_shard) gives HSDP: sharded within a node, replicated across nodes. Gradients are
averaged over all data-parallel ranks (FSDP2's default; call the model's `set_gradient_divide_factor` to
change it), so a loss normalised by a global count is multiplied by the world size before backward.
`Transformer.token_logprobs` and `Transformer.generalized_jsd` are registered as FSDP forward methods, so
the LM head is unsharded, cast and reduce-scattered as in forward.

Mixed precision is FSDP2's and nothing else: under plain `python`, a param dtype makes `parallelize` start a
one-rank process group (an in-process store: no port, no network) and shard over it. One process then
runs exactly the code N processes run (the same bf16 casts at the same places, sampling on the bf16
all-gathered weights), so its rows are N processes' rows up to reduction order; autocast would be a
second mechanism with other numerics (it keeps element-wise ops in fp32). The group is left at exit.

Randomness: everything that decides results (data order, sampling seeds, initialisation) is derived from
the global seed alone, identically on every rank, so the world size never changes them.

Left out: tensor, pipeline and context parallelism; CPU offload; float8.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor

from atlas.model import Transformer
from atlas.model.weights import open_checkpoint

logger = logging.getLogger("atlas")


def init() -> None:
    """Join torchrun's process group (idempotent); a no-op under plain python."""
    if dist.is_initialized() or not {"RANK", "WORLD_SIZE"} <= os.environ.keys():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("cpu:gloo,cuda:nccl", device_id=device())
    else:
        dist.init_process_group("gloo")


def shutdown() -> None:
    """Leave the process group (a barrier first: gloo aborted one teardown in seven without it)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Global rank 0: the one process that writes metrics, HF exports and the console."""
    return rank() == 0


def device() -> torch.device:
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def _init_one_rank() -> None:
    """A process group of this process alone (see the module docstring): FSDP2 for plain `python`."""
    if torch.cuda.is_available():
        dist.init_process_group("cpu:gloo,cuda:nccl", store=dist.HashStore(), rank=0, world_size=1,
                                device_id=device())
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    logger.info("mixed precision under plain python: FSDP2 on a one-rank process group")


def device_mesh(dp_replicate: int = 1) -> DeviceMesh | None:
    """The data-parallel mesh over every rank: ("dp_shard",), or ("dp_replicate", "dp_shard") with
    `dp_replicate` groups for HSDP (e.g. the number of nodes). None without a process group."""
    if not dist.is_initialized():
        if dp_replicate != 1:
            raise ValueError("dp_replicate > 1 needs several processes: run under torchrun")
        return None
    world = world_size()
    if dp_replicate < 1 or world % dp_replicate:
        raise ValueError(f"dp_replicate ({dp_replicate}) must be >= 1 and divide the world size ({world})")
    device_type = device().type
    if dp_replicate == 1:
        return init_device_mesh(device_type, (world,), mesh_dim_names=("dp_shard",))
    return init_device_mesh(device_type, (dp_replicate, world // dp_replicate),
                            mesh_dim_names=("dp_replicate", "dp_shard"))


def parallelize(
    model: Transformer,
    mesh: DeviceMesh | None = None,
    *,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype = torch.float32,
    activation_checkpointing: bool = False,
) -> Transformer:
    """Shard `model` in place with FSDP2 (blocks, then the root) and return it; see the module docstring.

    mesh: a DeviceMesh (from `device_mesh()` or a plain 1-D `init_device_mesh`); None takes `device_mesh()`. A model
    that is already an FSDP module is left as it is (only the checkpointing flag is set), so trainers can
    call this on whatever they are given. Without a process group the model is returned unsharded, unless
    `param_dtype` asks for mixed precision (then over a one-rank group: the module docstring).
    """
    model.activation_checkpointing = activation_checkpointing
    if isinstance(model, FSDPModule):
        return model
    if mesh is None and param_dtype is not None and not dist.is_initialized():
        _init_one_rank()
    mesh = mesh if mesh is not None else device_mesh()
    if mesh is None:
        return model
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype if param_dtype else None)
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for method in ("token_logprobs", "generalized_jsd"):  # the LM head's other entry points
        register_fsdp_forward_method(model, method)
    return model


def load_pretrained(
    path_or_hub_id: str | os.PathLike,
    mesh: DeviceMesh | None = None,
    *,
    dtype: torch.dtype | None = None,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype = torch.float32,
    activation_checkpointing: bool = False,
) -> Transformer:
    """An HF checkpoint loaded straight into an FSDP2-sharded model on `device()`.

    The model is built on the meta device, sharded (`parallelize`), allocated shard by shard
    (`to_empty`), and filled one checkpoint tensor at a time: each rank reads the tensor from the
    safetensors file and keeps its own shard. At peak a rank holds its shard of every parameter plus one
    full tensor (the largest: the embedding, V x H) in `dtype` and its stored dtype; the full model never
    exists on any rank. dtype: the sharded (master) weights' dtype; default fp32 when `param_dtype` is
    given (mixed precision), else the checkpoint's. Without a process group this is
    `atlas.model.from_pretrained` on `device()`.
    """
    ckpt = open_checkpoint(path_or_hub_id)
    dtype = dtype or (torch.float32 if param_dtype is not None else ckpt.dtype)
    if not dist.is_initialized():
        from atlas.model import from_pretrained

        model = from_pretrained(path_or_hub_id, dtype=dtype, device=device())
        return parallelize(model, None, param_dtype=param_dtype, activation_checkpointing=activation_checkpointing)
    with torch.device("meta"):
        model = Transformer(ckpt.config).to(dtype)
    parallelize(model, mesh, param_dtype=param_dtype, reduce_dtype=reduce_dtype,
                activation_checkpointing=activation_checkpointing)
    model.to_empty(device=device())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, full in ckpt.tensors("cpu"):
            param = params[name]
            full = full.to(device=param.device, dtype=dtype)
            # src_data_rank=None: every rank read the same tensor, so each slices its own shard, no traffic
            param.copy_(distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None))
            del full
    return model.eval()


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` was sharded with FSDP2 (`parallelize`)."""
    return isinstance(model, FSDPModule)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor (DTensor); a plain tensor as is."""
    return t.to_local() if isinstance(t, DTensor) else t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded tensor (a collective: every rank calls it); a plain tensor as is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@contextlib.contextmanager
def gathered(model: Transformer) -> Iterator[None]:
    """Hold every parameter of `model` unsharded for the duration, and run its blocks without module hooks.

    For generation on an FSDP2 model: FSDP's per-block hooks would reshard (free) each block after every
    decode step and all-gather it again at the next. Inside, each FSDP module found sharded is unsharded
    once (`FSDPModule.unshard`, which follows the MixedPrecisionPolicy: the bf16 weights the trainer
    computes with) and resharded on exit; one found unsharded is left so. No FSDP setting is read or
    changed, so a model that never ran forward meets its first forward exactly as FSDP would have had it.
    Call `model.forward(...)` inside, not `model(...)`, whose root hooks would run. Costs one full copy of
    the parameters per rank for the duration. For an unsharded model, only the flag is set.
    """
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    sharded = [m for m in modules if _holds_sharded(m)]
    for m in sharded:
        m.unshard()
    model.bypass_block_hooks = True
    try:
        yield
    finally:
        model.bypass_block_hooks = False
        for m in sharded:
            m.reshard()


@contextlib.contextmanager
def root_unsharded(model: Transformer) -> Iterator[None]:
    """The root's own parameters (embeddings, final norm, LM head) of an FSDP2 model held unsharded for the
    duration (GKD reads its frozen teacher's head in the loss and again in its backward); a no-op for an
    unsharded model."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def copy_model(model: Transformer) -> Transformer:
    """A copy of `model` with its own parameters, sharded as `model` is (GRPO's reference). For an FSDP2
    model the copy is built on the meta device, sharded over the same mesh (without mixed precision: a
    frozen copy is held in the dtype it computes in) and filled shard by shard, without communication; the
    whole model never exists on one rank."""
    if not is_sharded(model):
        return copy.deepcopy(model)
    mesh = model.embed_tokens.weight.device_mesh
    with torch.device("meta"):
        copied = Transformer(model.config)
    parallelize(copied, mesh)
    copied.to_empty(device=local_tensor(model.embed_tokens.weight).device)
    with torch.no_grad():
        for mine, theirs in zip(copied.parameters(), model.parameters(), strict=True):
            mine.to_local().copy_(theirs.to_local())
    copied.init_buffers(local_tensor(model.embed_tokens.weight).device)
    return copied


def _holds_sharded(module: FSDPModule) -> bool:
    """Whether the parameters this FSDP module manages (its own and those of non-FSDP submodules) are
    registered as sharded DTensors, as FSDP2 leaves them between forwards."""
    stack, own = [module], []
    while stack:
        m = stack.pop()
        own.extend(m.parameters(recurse=False))
        stack.extend(c for c in m.children() if not isinstance(c, FSDPModule))
    return any(isinstance(p, DTensor) for p in own)


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place over every rank ("sum", "max", "min"); the identity in one process."""
    if dist.is_initialized():
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t


def all_reduce_sums(values: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Named sums over every rank, in float64, in one collective: {"loss": ..., "tokens": ...} -> the
    same keys with the global sums (the identity in one process)."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(device()).reshape(()) for v in values.values()])
    return dict(zip(values, all_reduce(t).tolist()))


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order; [obj] in one process."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def setup_logging(level: int = logging.INFO) -> None:
    """Log records of the "atlas" loggers to stderr: at `level` on global rank 0, warnings and errors
    only on the other ranks, each line prefixed with its rank when there are several."""
    prefix = f"[rank {rank()}] " if world_size() > 1 else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(prefix + "%(name)s: %(message)s"))
    root = logging.getLogger("atlas")
    root.handlers[:] = [handler]
    root.setLevel(level if is_main() else max(level, logging.WARNING))
    root.propagate = False


__all__ = ["all_gather_object", "all_reduce", "all_reduce_sums", "barrier", "copy_model", "device", "device_mesh",
           "full_tensor", "gathered", "init", "is_main", "is_sharded", "load_pretrained", "local_rank", "local_tensor",
           "parallelize", "rank", "root_unsharded", "setup_logging", "shutdown", "world_size"]

