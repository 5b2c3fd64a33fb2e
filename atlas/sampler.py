"""KV-cached batched sampling on the trainer's own model object.

There is no second copy of the weights and no second implementation of the numerics: the sampler calls
the same `Transformer.forward` the trainer calls, and scores sampled tokens with the same kernel the
trainer uses (`atlas.kernels.token_logprobs`), so `Completion.logprobs` are the numbers the trainer
recomputes for the same tokens (up to batch-shape effects on floating-point reductions).

Per generate call, for P prompts and n samples each (B = P * n rows, prompt-major):
1. one static KV cache [L, B, KVH, S, D], S = longest prompt + max_new_tokens; prompts left-padded so every
   row writes the same slot each step;
2. prefill each prompt once, into rows 0, n, 2n, ... of the cache (a strided view), then copy those rows
   into their group's other n - 1 rows: GRPO's one prompt, G completions, at the cost of one prefill;
3. decode: sample from the last logits, append, feed back. Rows that finish (a stop token, EOS unless
   `ignore_eos`) are dropped from the batch (the cache is compacted), so they stop costing compute.

Sampling, per row, on the temperature-scaled logits z / T: top-k, then top-p (smallest set whose
probability reaches p), then min-p (drop tokens below min_p * max prob); a token is drawn from the
renormalised remainder with the exponential-race trick argmax(p / E), E ~ Exp(1) drawn from an explicit
`torch.Generator` (same seed, same device -> same tokens; no host sync). temperature = 0 is greedy.

Two log-probabilities per sampled token:
- `logprobs`: log softmax(z / T)[token] over the *full* vocabulary (T = 1 for greedy): what the trainer
  recomputes, the denominator of PPO/GRPO importance ratios;
- `sampled_logprobs`: under the truncated distribution actually sampled from (equal to `logprobs`
  without top-k/top-p/min-p), so importance ratios under truncation can be made exact.

FSDP2: a sharded model is gathered once for the whole call (`unshard()` on every FSDP module, with
resharding after forward switched off until the end), not per decode step. That costs one full copy of
the parameters per rank for the duration of generation, on top of the sharded ones, plus the KV cache
(2 * L * B * S * KVH * D * bytes).

`compile=True` compiles the decode step (model forward + LM head for one token per row) once with
torch.compile, gpt-fast style: the cache switches to fixed shapes after prefill (`start_static_decode`:
tensor write slot, attention over all slots under a mask), and finished rows are no longer compacted
(they stop being sampled but keep their slot, so shapes never change). On CUDA it uses CUDA graphs
("reduce-overhead"). Each distinct (rows, cache length) compiles once; cache lengths are rounded up to a
multiple of 64 so repeated calls with similar lengths reuse it. The KV cache is then kept between calls
and reused while (rows, cache length) stay the same, its buffers marked as static addresses: CUDA graphs
replay fixed addresses, and torch skips them for in-place updates of an input it does not know to be
static. So a compiling Sampler holds one cache's memory between calls, until the shape changes or the
Sampler is dropped. The eager path is the default: see BENCHMARKS.md for where compiling pays.

Left out: paged attention, continuous batching across calls, speculative decoding, beam search,
repetition penalties. On CUDA the loop checks for finished rows every `check_every` steps (default 8)
to avoid a host sync per token; on CPU every step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from atlas.kernels import token_logprobs
from atlas.model.transformer import KVCache, Transformer


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    n: int = 1
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.n < 1:
            raise ValueError(f"n (samples per prompt) must be >= 1, got {self.n}")

    @property
    def truncates(self) -> bool:
        return self.temperature > 0 and (self.top_k > 0 or self.top_p < 1 or self.min_p > 0)


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (a stop/EOS token, included in token_ids) or "length"
    prompt_index: int
    sampled_logprobs: list[float] = field(default_factory=list)


class Sampler:
    """Generate from `model` (an atlas Transformer, possibly FSDP2-sharded) in place.

    eos_token_ids: extra end-of-sequence ids; the model config's eos ids are always included, and so is
    `tokenizer.eos_token_id` when a tokenizer is given.
    """

    def __init__(self, model: Transformer, tokenizer=None, eos_token_ids: list[int] | None = None,
                 check_every: int | None = None, compile: bool = False):
        self.model = model
        self.compile = compile
        self._step = self._forward_step
        if compile:
            mode = "reduce-overhead" if model.device.type == "cuda" else "default"
            self._step = torch.compile(self._forward_step, fullgraph=True, dynamic=False, mode=mode)
        eos = set(model.config.eos_token_id) | set(eos_token_ids or [])
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos_token_ids = sorted(eos)
        self.check_every = check_every
        self._cache: KVCache | None = None  # compile=True: the last KV cache, reused while its shape fits

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Completion]:
        config, device = self.model.config, self.model.device
        self._check_prompts(prompt_ids)
        P, n = len(prompt_ids), params.n
        B = P * n
        lengths = [len(p) for p in prompt_ids]
        Tp = max(lengths)
        if Tp + params.max_new_tokens > config.max_position_embeddings:
            raise ValueError(
                f"longest prompt ({Tp}) + max_new_tokens ({params.max_new_tokens}) exceeds the model's "
                f"max_position_embeddings ({config.max_position_embeddings}); shorten one of them"
            )
        stop_ids = set(params.stop_token_ids or []) | (set() if params.ignore_eos else set(self.eos_token_ids))
        stop = torch.tensor(sorted(stop_ids) or [-1], device=device)
        gen = torch.Generator(device=device)
        if params.seed is None:
            gen.seed()
        else:
            gen.manual_seed(params.seed)
        check_every = self.check_every or (8 if device.type == "cuda" else 1)

        ids_PT = torch.zeros(P, Tp, dtype=torch.long, device=device)
        mask_PT = torch.zeros(P, Tp, dtype=torch.long, device=device)
        for i, p in enumerate(prompt_ids):
            ids_PT[i, Tp - len(p):] = torch.tensor(p, device=device)
            mask_PT[i, Tp - len(p):] = 1

        max_len = Tp + params.max_new_tokens
        if self.compile:
            max_len = min(-(-max_len // 64) * 64, config.max_position_embeddings)
        with _gathered(self.model):
            cache = self._kv_cache(B, max_len)
            prefill = cache.every_nth_row(n)
            hidden = self.model(ids_PT, attention_mask_BT=mask_PT, cache=prefill, return_hidden=True)
            _broadcast_groups(cache, prefill, n)
            logits_BV = self.model.lm_head(hidden[:, -1]).repeat_interleave(n, dim=0)
            if self.compile:
                cache.start_static_decode()
            tokens_BT, logp_BT, slogp_BT, ended_at_B = self._decode(
                logits_BV, cache, torch.tensor(lengths, device=device).repeat_interleave(n), params, stop, gen,
                check_every,
            )
        return self._completions(tokens_BT, logp_BT, slogp_BT, ended_at_B, n, params)

    def _kv_cache(self, rows: int, max_len: int) -> KVCache:
        """A fresh cache per call; with compile=True the last one is kept and reused while (rows, max_len,
        dtype, device) stay the same, its buffers marked as static addresses: CUDA graphs replay fixed addresses, and a
        cache reallocated per call would make torch re-record the graph at every call (or, as a mutated
        input it does not know to be static, skip CUDA graphs altogether)."""
        kept, model = self._cache, self.model
        if kept is not None and (kept.batch_size, kept.max_len, kept.k[0].dtype, kept.k[0].device) == (
                rows, max_len, model.dtype, model.device):
            kept.reset()
            return kept
        self._cache = kept = None  # freed before the new one is allocated
        cache = KVCache(model.config, rows, max_len, dtype=model.dtype, device=model.device)
        if self.compile:
            for t in cache.buffers():
                torch._dynamo.mark_static_address(t)
            self._cache = cache
        return cache

    def _decode(self, logits_BV, cache, prompt_len_B, params, stop, gen, check_every):
        """The decode loop; returns tokens/logprobs [B, max_new] and each row's stop step (-1: ran out)."""
        B, device, steps = logits_BV.shape[0], logits_BV.device, params.max_new_tokens
        tokens_BT = torch.zeros(B, steps, dtype=torch.long, device=device)
        logp_BT = torch.zeros(B, steps, dtype=torch.float32, device=device)
        slogp_BT = torch.zeros(B, steps, dtype=torch.float32, device=device) if params.truncates else logp_BT
        ended_at_B = torch.full((B,), -1, dtype=torch.long, device=device)
        rows = torch.arange(B, device=device)  # original row of each live cache row
        live_stop = torch.full((B,), -1, dtype=torch.long, device=device)
        for t in range(steps):
            token_b, logp_b, slogp_b = sample(logits_BV, params, gen)
            tokens_BT[rows, t] = token_b
            logp_BT[rows, t] = logp_b
            if params.truncates:
                slogp_BT[rows, t] = slogp_b
            just_stopped = torch.isin(token_b, stop) & (live_stop < 0)
            live_stop = torch.where(just_stopped, t, live_stop)
            if t == steps - 1:
                break
            if (t + 1) % check_every == 0:
                finished = live_stop >= 0
                if bool(finished.all()):
                    break
                if bool(finished.any()) and not self.compile:  # compact: finished rows leave batch and cache
                    keep = (~finished).nonzero().squeeze(1)
                    ended_at_B[rows[finished]] = live_stop[finished]
                    rows, token_b, live_stop = rows[keep], token_b[keep], live_stop[keep]
                    cache.select_rows(keep)
            logits_BV = self._step(token_b[:, None], (prompt_len_B[rows] + t)[:, None], cache)
        ended_at_B[rows] = live_stop
        return tokens_BT, logp_BT, slogp_BT, ended_at_B

    def _forward_step(self, tokens_B1: torch.Tensor, positions_B1: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decode step: next-token logits [B, V] for one token per row."""
        hidden = self.model(tokens_B1, positions_BT=positions_B1, cache=cache, return_hidden=True)
        return self.model.lm_head(hidden[:, 0])

    def _completions(self, tokens_BT, logp_BT, slogp_BT, ended_at_B, n, params) -> list[Completion]:
        tokens, logp, slogp, ended = (x.cpu() for x in (tokens_BT, logp_BT, slogp_BT, ended_at_B))
        out = []
        for b in range(tokens.shape[0]):
            end = int(ended[b]) + 1 if ended[b] >= 0 else params.max_new_tokens
            out.append(Completion(
                token_ids=tokens[b, :end].tolist(),
                logprobs=logp[b, :end].tolist(),
                finish_reason="stop" if ended[b] >= 0 else "length",
                prompt_index=b // n,
                sampled_logprobs=slogp[b, :end].tolist(),
            ))
        return out

    def _check_prompts(self, prompt_ids: list[list[int]]) -> None:
        if not prompt_ids:
            raise ValueError("prompt_ids is empty: pass a list of token-id lists, one per prompt")
        vocab = self.model.config.vocab_size
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
            if min(p) < 0 or max(p) >= vocab:
                raise ValueError(f"prompt {i} has token ids outside [0, {vocab})")


def sample(logits_BV: torch.Tensor, params: SamplingParams, gen: torch.Generator):
    """Draw one token per row; return (tokens [B], full-distribution logprobs [B], sampled-distribution ones)."""
    if params.temperature == 0:
        token_b = logits_BV.argmax(-1)
        logp_b = token_logprobs(logits_BV, token_b)
        return token_b, logp_b, logp_b
    z_BV = logits_BV.float() / params.temperature
    if params.truncates:
        z_BV = truncate(z_BV, params)
    probs_BV = z_BV.softmax(-1)
    noise_BV = torch.empty_like(probs_BV).exponential_(1, generator=gen)
    token_b = (probs_BV / noise_BV).argmax(-1)
    logp_b = token_logprobs(logits_BV, token_b, temperature=params.temperature)
    slogp_b = probs_BV.gather(-1, token_b[:, None]).squeeze(-1).log() if params.truncates else logp_b
    return token_b, logp_b, slogp_b


def truncate(z_BV: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Set to -inf the logits outside the top-k, then top-p nucleus, then min-p set (at least one token stays)."""
    if params.top_k > 0 and params.top_k < z_BV.shape[-1]:
        kth = z_BV.topk(params.top_k, dim=-1).values[:, -1:]
        z_BV = z_BV.masked_fill(z_BV < kth, float("-inf"))
    if params.top_p < 1:
        sorted_z, order = z_BV.sort(dim=-1, descending=True)
        probs = sorted_z.softmax(-1)
        # drop a token when the tokens strictly more likely already reach top_p
        drop_sorted = (probs.cumsum(-1) - probs) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z_BV = z_BV.masked_fill(drop, float("-inf"))
    if params.min_p > 0:
        probs = z_BV.softmax(-1)
        z_BV = z_BV.masked_fill(probs < params.min_p * probs.amax(-1, keepdim=True), float("-inf"))
    return z_BV


def _broadcast_groups(cache: KVCache, prefill: KVCache, n: int) -> None:
    """Copy each prompt's prefilled row into its group's other n - 1 rows."""
    if n > 1:
        B, H, S, D = cache.k[0].shape
        for buf in cache.k + cache.v:
            groups = buf.view(B // n, n, H, S, D)
            groups[:, 1:] = groups[:, :1]
        cache.valid_BS.view(B // n, n, S)[:, 1:] = cache.valid_BS.view(B // n, n, S)[:, :1]
    cache.pos, cache.has_pad = prefill.pos, prefill.has_pad


@contextlib.contextmanager
def _gathered(model: nn.Module) -> Iterator[None]:
    """Unshard an FSDP2 model once for a whole generation; a no-op for an unsharded model.

    Each module's reshard-after-forward is restored as a bool: an int setting (resharding to a smaller
    mesh) comes back as True.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch build without distributed
        yield
        return
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    # restore each module's own setting afterwards (torchtitan keeps the root gathered after forward)
    groups = [m._get_fsdp_state()._fsdp_param_group for m in modules]  # None: the module owns no parameters
    before = [g is None or g.post_forward_mesh_info is not None for g in groups]
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m, reshard in zip(modules, before):
            m.reshard()
            m.set_reshard_after_forward(reshard, recurse=False)
