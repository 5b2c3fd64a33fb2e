"""KV-cached batched sampling on the trainer's own model object.

There is no second copy of the weights and no second implementation of the numerics: the sampler calls
the same `Transformer.forward` the trainer calls, and scores sampled tokens with the same row math the
trainer's `model.token_logprobs` uses (logits in the model dtype, cast to fp32, times 1/T, log-softmax),
so `Completion.logprobs` are the numbers the trainer recomputes for the same tokens, up to the
floating-point difference between a KV-cached decode step and a full forward (measured in BENCHMARKS.md:
0 in fp32 to 1e-5, and what it is in bf16).

Per generate call, for P prompts and n samples each (B = P * n rows, prompt-major):
1. one static KV cache (atlas.model.cache), S = longest prompt + max_new_tokens, prompts left-padded;
2. prefill each prompt once and fork it to its n rows: GRPO's one prompt, G completions, one prefill;
3. decode: sample from the last logits, append, feed back, until every row has stopped (a stop token,
   the eos or the template's end of turn unless `ignore_eos`) or max_new_tokens. Finished rows leave the
   batch (eager) or keep their slot unsampled (compiled: shapes never change).

Sampling, per row, on the temperature-scaled logits z / T: top-k, then top-p (smallest set whose
probability reaches p), then min-p (drop tokens below min_p * max prob); a token is drawn from the
renormalised remainder by inverting its CDF at a uniform u: the first token whose cumulative probability
exceeds u. temperature = 0 is greedy.

Randomness: the u of sample j of prompt i at decode step t is a hash of (prompt_seeds[i], j, t) only
(`uniforms`: a 32-bit integer mixer run on two lanes, in int64 arithmetic that never overflows, on the
device, for all steps at once). So the tokens a row draws do not depend on its position in the batch,
on which other prompts share the batch, on compaction, `check_every` or compile, nor on how prompts
are split over ranks: rank r sampling its share of prompts with their global seeds reproduces a
1-process run. Default seeds derive from `params.seed` and the prompt index (from torch's global RNG
when `seed` is None). The CDF is summed in fp32: a token's chance is exact to about 6e-8 in absolute
terms, and u has 24 bits.

Two log-probabilities per sampled token:
- `logprobs`: log softmax(z / T)[token] over the *full* vocabulary (T = 1 for greedy): what the trainer
  recomputes, the denominator of PPO/GRPO importance ratios;
- `sampled_logprobs`: under the truncated distribution actually sampled from (equal to `logprobs`
  without top-k/top-p/min-p), so importance weights under truncation need no extra forward (GRPO's
  `tis_cap`).

Conversations (`Sampler.conversation`, an agent's trajectories): rows that generate turn by turn on one
cache, each turn until a stop token or the row's own budget, rows done early kept (fed masked tokens)
so that `extend` can prefill what comes next (tool results) into the same cache, without recomputing
the context; eager only.

Left out: paged attention, continuous batching across calls, speculative decoding, beam search,
repetition penalties.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

import atlas.distributed as ad
from atlas.kernels import token_logprobs
from atlas.model import KVCache, Transformer
from atlas.model.prepack import prepacked
from atlas.model.tokenizer import stop_ids


@dataclass
class Truncation:
    """How a token is drawn: temperature, then top-k / top-p / min-p (the module docstring), and whether the
    eos and end of turn stop a row. Declared once: `SamplingParams` and the trainers' configs (GRPOConfig's
    flat keys) inherit these fields."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    ignore_eos: bool = False  # sample exactly max_new_tokens (benchmarks): no eos or end of turn stops a row


@dataclass
class SamplingParams(Truncation):
    max_new_tokens: int = 64
    n: int = 1
    seed: int | None = None
    stop_token_ids: list[int] | None = None

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

    eos_token_ids: extra end-of-sequence ids; the model config's eos ids are always included, and with a
    tokenizer its `stop_token_ids` (its eos and the chat template's end of turn: atlas.model.tokenizer).
    check_every: how often the decode loop looks for finished rows (a host sync); default every 8 steps
    on CUDA, every step on CPU (where a sync costs nothing).
    compile: torch.compile the decode step (model forward + LM head for one token per row) once, gpt-fast
    style: after prefill the cache switches to fixed shapes (`KVCache.start_static_decode`), finished
    rows are no longer compacted, and on CUDA the step runs as CUDA graphs ("reduce-overhead"). Each
    distinct (rows, cache length) compiles once; cache lengths are rounded up to a multiple of 64 so
    calls with similar lengths reuse it (`_kv_cache` keeps the cache between calls). The eager path is
    the default: BENCHMARKS.md says where compiling pays.
    """

    def __init__(self, model: Transformer, tokenizer=None, eos_token_ids: list[int] | None = None,
                 check_every: int | None = None, compile: bool = False):
        self.model = model
        self.compile = compile
        self._step = self._forward_step
        if compile:
            mode = "reduce-overhead" if model.device.type == "cuda" else "default"
            self._step = torch.compile(self._forward_step, fullgraph=True, dynamic=False, mode=mode)
        self.eos_token_ids = sorted({*stop_ids(model.config.eos_token_id, tokenizer), *(eos_token_ids or [])})
        self.check_every = check_every
        self._cache: KVCache | None = None  # compile=True: the last KV cache, reused while its shape fits

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 prompt_seeds: list[int] | None = None) -> list[Completion]:
        """n completions per prompt, prompt-major. prompt_seeds[i] (any int) fixes prompt i's random
        streams; by default they derive from params.seed and i."""
        config, device = self.model.config, self.model.device
        self._check_prompts(prompt_ids)
        P, n = len(prompt_ids), params.n
        B = P * n
        Tp = max(len(p) for p in prompt_ids)
        if Tp + params.max_new_tokens > config.max_position_embeddings:
            raise ValueError(
                f"longest prompt ({Tp}) + max_new_tokens ({params.max_new_tokens}) exceeds the model's "
                f"max_position_embeddings ({config.max_position_embeddings}); shorten one of them"
            )
        seeds = _prompt_seeds(prompt_seeds, P, params.seed)
        stop = self._stop(params)
        check_every = self.check_every or (8 if device.type == "cuda" else 1)

        ids_PT = torch.zeros(P, Tp, dtype=torch.long, device=device)
        mask_PT = torch.zeros(P, Tp, dtype=torch.long, device=device)
        for i, p in enumerate(prompt_ids):
            ids_PT[i, Tp - len(p):] = torch.tensor(p, device=device)
            mask_PT[i, Tp - len(p):] = 1
        u_BT = None if params.temperature == 0 else uniforms(seeds, n, params.max_new_tokens, device)

        max_len = Tp + params.max_new_tokens
        if self.compile:
            max_len = min(-(-max_len // 64) * 64, config.max_position_embeddings)
        # An FSDP2 model is all-gathered once for the whole generation (in the dtype it computes in) and its
        # blocks run without hooks: one full copy of the parameters per rank for the duration, on top of the
        # shards, plus the cache (2 * L * B * S * KVH * D * bytes); see atlas.distributed.gathered.
        with self._weights():
            cache = self._kv_cache(B, max_len)  # after gathering: the dtype FSDP computes in
            hidden = self.model.forward(ids_PT, attention_mask_BT=mask_PT, cache=cache.every_nth_row(n),
                                        return_hidden=True)  # each prompt once...
            cache.fork(n)  # ...continued by its n samples
            logits_BV = self.model.lm_head(hidden[:, -1]).repeat_interleave(n, dim=0)
            if self.compile:
                cache.start_static_decode()
            decoded = self._decode(logits_BV, cache, params, stop, u_BT, check_every)
        return self._completions(*decoded, n)

    def conversation(self, prompt_ids: list[list[int]], params: SamplingParams,
                     streams: list[tuple[int, ...]]) -> Conversation:
        """Rows that generate turn by turn on one cache (an agent's trajectories): `with sampler.conversation(
        ids per row, params, stream words per row) as conv:` then `conv.turn(budgets)` and
        `conv.extend({row: tokens})`; see `Conversation`. Eager only (a conversation's shapes change)."""
        if self.compile:
            raise ValueError("a multi-turn conversation runs the eager decode step: use a Sampler without compile")
        self._check_prompts(prompt_ids)
        limit = self.model.config.max_position_embeddings
        if max(len(p) for p in prompt_ids) >= limit:
            raise ValueError(f"a prompt of {max(len(p) for p in prompt_ids)} tokens leaves no position to generate in "
                             f"(max_position_embeddings {limit}): shorten it")
        return Conversation(self, prompt_ids, params, streams)

    @contextlib.contextmanager
    def _weights(self) -> Iterator[None]:
        """The parameters as generation reads them: gathered (FSDP2: atlas.distributed.gathered) and, eager on
        CPU in fp32, prepacked (atlas.model.prepack)."""
        with ad.gathered(self.model), prepacked(self.model, enabled=not self.compile):
            yield

    def _stop(self, params: SamplingParams) -> torch.Tensor:
        stop_ids = set(params.stop_token_ids or []) | (set() if params.ignore_eos else set(self.eos_token_ids))
        return torch.tensor(sorted(stop_ids) or [-1], device=self.model.device)

    def _kv_cache(self, rows: int, max_len: int) -> KVCache:
        """A fresh cache per call; with compile=True the last one is kept and reused while (rows, max_len,
        dtype, device) stay the same, its buffers marked as static addresses: CUDA graphs replay fixed
        addresses, and a cache reallocated per call would make torch re-record the graph at every call (or,
        as a mutated input it does not know to be static, skip CUDA graphs altogether). So a compiling
        Sampler holds one cache's memory between calls, until the shape changes or it is dropped."""
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

    def _decode(self, logits_BV, cache, params, stop, u_BT, check_every, budget_B=None, keep_rows=False):
        """The decode loop from the last logits of each row: tokens/logprobs [B, steps], each row's token
        count and whether a stop token ended it. `budget_B` caps each row's tokens (default max_new_tokens).
        Finished rows leave the batch and the cache (compaction), unless the cache's rows must outlive the
        turn (`keep_rows`: a conversation's next turn) or its shapes must not change (compile): then they
        stay, and with `keep_rows` what they are fed is masked out of the cache, so each row's last sampled
        token is the one not yet in it."""
        B, device = logits_BV.shape[0], logits_BV.device
        steps = params.max_new_tokens if budget_B is None else int(budget_B.max())
        tokens_BT = torch.zeros(B, steps, dtype=torch.long, device=device)
        logp_BT = torch.zeros(B, steps, dtype=torch.float32, device=device)
        slogp_BT = torch.zeros(B, steps, dtype=torch.float32, device=device) if params.truncates else logp_BT
        count_B = torch.full((B,), steps, dtype=torch.long, device=device)
        stopped_B = torch.zeros(B, dtype=torch.bool, device=device)
        rows = torch.arange(B, device=device)  # original row of each live cache row
        end = torch.full((B,), -1, dtype=torch.long, device=device)  # the step a live row ended at (-1: going)
        hit = torch.zeros(B, dtype=torch.bool, device=device)
        for t in range(steps):
            token_b, logp_b, slogp_b = sample(logits_BV, params, None if u_BT is None else u_BT[rows, t])
            tokens_BT[rows, t] = token_b
            logp_BT[rows, t] = logp_b
            if params.truncates:
                slogp_BT[rows, t] = slogp_b
            at_stop = torch.isin(token_b, stop) & (end < 0)
            done = at_stop if budget_B is None else at_stop | ((t + 1 >= budget_B[rows]) & (end < 0))
            end, hit = torch.where(done, t, end), hit | at_stop
            if t == steps - 1:
                break
            if (t + 1) % check_every == 0:
                finished = end >= 0
                if bool(finished.all()):
                    break
                if bool(finished.any()) and not (self.compile or keep_rows):  # compact
                    keep = (~finished).nonzero().squeeze(1)
                    count_B[rows[finished]], stopped_B[rows[finished]] = end[finished] + 1, hit[finished]
                    rows, token_b, end, hit = rows[keep], token_b[keep], end[keep], hit[keep]
                    cache.select_rows(keep)
            logits_BV = self._step(token_b[:, None], cache, (end < 0).long()[:, None] if keep_rows else None)
        count_B[rows] = torch.where(end >= 0, end + 1, steps)
        stopped_B[rows] = hit
        return tokens_BT, logp_BT, slogp_BT, count_B, stopped_B

    def _forward_step(self, tokens_B1: torch.Tensor, cache: KVCache, valid_B1: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """One decode step: next-token logits [B, V] for one token per row (positions: the cache's);
        `valid_B1` 0 where a row's token is not to be kept (a row that has finished its turn)."""
        hidden = self.model.forward(tokens_B1, attention_mask_BT=valid_B1, cache=cache, return_hidden=True)
        return self.model.lm_head(hidden[:, 0])

    def _completions(self, tokens_BT, logp_BT, slogp_BT, count_B, stopped_B, n) -> list[Completion]:
        tokens, logp, slogp, count, stopped = (x.cpu() for x in (tokens_BT, logp_BT, slogp_BT, count_B, stopped_B))
        return [Completion(token_ids=tokens[b, :count[b]].tolist(), logprobs=logp[b, :count[b]].tolist(),
                           finish_reason="stop" if stopped[b] else "length", prompt_index=b // n,
                           sampled_logprobs=slogp[b, :count[b]].tolist()) for b in range(tokens.shape[0])]

    def _check_prompts(self, prompt_ids: list[list[int]]) -> None:
        if not prompt_ids:
            raise ValueError("prompt_ids is empty: pass a list of token-id lists, one per prompt")
        vocab = self.model.config.vocab_size
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
            if min(p) < 0 or max(p) >= vocab:
                raise ValueError(f"prompt {i} has token ids outside [0, {vocab})")


class Conversation:
    """Rows generating turn by turn on one KV cache, in place on the model (its FSDP2 parameters held
    gathered while the conversation is open: use it as a context manager).

    Opening prefills each distinct prompt once and copies it to the rows that share it. `turn(budgets)`
    samples every row until it stops (a stop token, or `budgets[b]` tokens) and returns one Completion per
    row, in row order; rows that stop early keep their cache rows (what they are fed after stopping is
    masked out). `extend({row: tokens})` closes the rows not named (they leave the cache) and appends to
    each named row its last sampled token (not yet in the cache) and then `tokens` (an agent's tool
    results): one forward over a right-padded block, each row advancing by its own length, the cache
    growing when it must; the next `turn` continues from there. Randomness: the uniforms of row b at turn
    k and step t are a hash of (*streams[b], k, t) (turn 0: of (*streams[b], t), as `generate`'s).
    """

    def __init__(self, sampler: Sampler, prompt_ids: list[list[int]], params: SamplingParams,
                 streams: list[tuple[int, ...]]):
        self.sampler, self.params, self.streams, self.turns = sampler, params, list(streams), 0
        if len(self.streams) != len(prompt_ids):
            raise ValueError(f"one stream per row: {len(self.streams)} for {len(prompt_ids)} prompts")
        distinct: dict[tuple[int, ...], int] = {}
        rows = [distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids]
        self._ids = [list(p) for p in distinct]
        self._rows = rows
        self.pending: list[int] = []  # each row's last sampled token, not yet in the cache
        self._weights = sampler._weights()

    def __enter__(self) -> Conversation:
        self._no_grad = torch.no_grad()
        self._no_grad.__enter__()
        self._weights.__enter__()
        model, device = self.sampler.model, self.sampler.model.device
        Tp = max(len(p) for p in self._ids)
        ids_PT = torch.zeros(len(self._ids), Tp, dtype=torch.long, device=device)
        mask_PT = torch.zeros_like(ids_PT)
        for i, p in enumerate(self._ids):
            ids_PT[i, Tp - len(p):], mask_PT[i, Tp - len(p):] = torch.tensor(p, device=device), 1
        self.cache = KVCache(model.config, len(self._ids), Tp + self.params.max_new_tokens, dtype=model.dtype,
                             device=device)
        hidden = model.forward(ids_PT, attention_mask_BT=mask_PT, cache=self.cache, return_hidden=True)
        rows = torch.tensor(self._rows, device=device)
        self.cache.select_rows(rows)
        self.logits = model.lm_head(hidden[:, -1])[rows]
        return self

    def __exit__(self, *exc) -> None:
        self.cache = self.logits = None
        self._weights.__exit__(*exc)
        self._no_grad.__exit__(*exc)

    def turn(self, budgets: list[int]) -> list[Completion]:
        """One turn of every row: sampled until it stops or has `budgets[b]` tokens."""
        sampler, params, cache = self.sampler, self.params, self.cache
        device = sampler.model.device
        steps = max(budgets)
        cache.grow(cache.pos + steps)
        if params.temperature == 0:
            u_BT = None
        else:
            u_BT = row_uniforms([(*w, self.turns) if self.turns else w for w in self.streams], steps, device)
        check_every = sampler.check_every or (8 if device.type == "cuda" else 1)
        decoded = sampler._decode(self.logits, cache, dataclasses.replace(params, max_new_tokens=steps),
                                  sampler._stop(params), u_BT, check_every,
                                  budget_B=torch.tensor(budgets, device=device), keep_rows=True)
        out = sampler._completions(*decoded, 1)
        self.pending = [c.token_ids[-1] for c in out]
        self.turns += 1
        return out

    def extend(self, appended: dict[int, list[int]]) -> None:
        """Keep the rows named (in row order), each continued by its pending token and `appended[row]`."""
        model, device = self.sampler.model, self.sampler.model.device
        keep = sorted(appended)
        self.cache.select_rows(torch.tensor(keep, device=device, dtype=torch.long))
        self.streams = [self.streams[b] for b in keep]
        blocks = [[self.pending[b], *appended[b]] for b in keep]
        T = max(len(x) for x in blocks)
        ids_BT = torch.zeros(len(blocks), T, dtype=torch.long, device=device)
        mask_BT = torch.zeros_like(ids_BT)
        for b, x in enumerate(blocks):
            ids_BT[b, :len(x)], mask_BT[b, :len(x)] = torch.tensor(x, device=device), 1
        self.cache.grow(self.cache.pos + T)
        hidden = model.forward(ids_BT, attention_mask_BT=mask_BT, cache=self.cache, return_hidden=True)
        last = torch.tensor([len(x) - 1 for x in blocks], device=device)
        self.logits = model.lm_head(hidden[torch.arange(len(blocks), device=device), last])
        self.pending = []


def sample(logits_BV: torch.Tensor, params: SamplingParams, u_B: torch.Tensor | None):
    """Draw one token per row at the uniforms u_B (None: greedy); return (tokens [B], full-distribution
    logprobs [B], sampled-distribution ones)."""
    if params.temperature == 0:
        token_b = logits_BV.argmax(-1)
        logp_b = token_logprobs(logits_BV, token_b)
        return token_b, logp_b, logp_b
    z_BV = logits_BV.float() * (1.0 / params.temperature)  # the row math of token_logprobs
    if params.truncates:
        z_BV = truncate(z_BV, params)
    probs_BV = z_BV.softmax(-1)
    cdf_BV = probs_BV.cumsum(-1)
    # the first token whose cumulative probability exceeds u * total: never one of probability 0
    token_b = torch.searchsorted(cdf_BV, (u_B * cdf_BV[:, -1])[:, None], right=True).squeeze(1)
    token_b = token_b.clamp_(max=logits_BV.shape[-1] - 1)
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


# Counter-based randomness. Words are 32-bit values held in int64 (python ints or tensors alike): the
# products below stay under 2^49, so nothing relies on integer overflow.
_M32 = 0xFFFFFFFF
_LANES = (0x243F6A88, 0x85A308D3)  # the two lanes' initial states (digits of pi)


def _mul32(x, c: int):
    """(x * c) mod 2^32, in 16-bit halves of c."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x):
    """lowbias32 (C. Wellons): a bijection of 32-bit words with full avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash(*words: int) -> tuple[int, int]:
    """Two 32-bit lanes over a sequence of integers of up to 64 bits (split into low/high words)."""
    lanes = []
    for h in _LANES:
        for w in words:
            w &= (1 << 64) - 1
            h = _mix32(_mix32(h ^ (w & _M32)) ^ (w >> 32))
        lanes.append(h)
    return lanes[0], lanes[1]


def stream_seed(*words: int) -> int:
    """A 64-bit seed from integers (e.g. a run's seed, a step, a prompt's global index): how trainers give
    each prompt its own random stream, the same whichever rank samples it."""
    a, b = _hash(*words)
    return a << 32 | b


def _prompt_seeds(prompt_seeds: list[int] | None, P: int, seed: int | None) -> list[int]:
    if prompt_seeds is not None:
        if len(prompt_seeds) != P or not all(isinstance(s, int) and not isinstance(s, bool) for s in prompt_seeds):
            raise ValueError(f"prompt_seeds must be a list of {P} ints (one per prompt), got {prompt_seeds!r}")
        return list(prompt_seeds)
    base = int(torch.randint(0, 2**62, ())) if seed is None else seed
    return [stream_seed(base, i) for i in range(P)]


def uniforms(prompt_seeds: list[int], n: int, steps: int, device: torch.device | str) -> torch.Tensor:
    """u [P * n, steps] in [0, 1) (fp32, 24 bits): row i * n + j, column t depends on
    (prompt_seeds[i], j, t) alone."""
    return row_uniforms([(s, j) for s in prompt_seeds for j in range(n)], steps, device)


def row_uniforms(rows: list[tuple[int, ...]], steps: int, device: torch.device | str) -> torch.Tensor:
    """u [B, steps] in [0, 1): row b, column t depends on the words rows[b] and t alone."""
    keys = [_hash(*words) for words in rows]
    a_B1 = torch.tensor([k[0] for k in keys], dtype=torch.long, device=device)[:, None]
    b_B1 = torch.tensor([k[1] for k in keys], dtype=torch.long, device=device)[:, None]
    t_1T = torch.arange(steps, dtype=torch.long, device=device)[None]
    h_BT = _mix32(_mix32(a_B1 ^ t_1T) ^ b_B1)
    return (h_BT >> 8).float() * 2.0**-24
