"""One pre-norm decoder for Llama 3.x, Qwen2/Qwen2.5 and Qwen3.

    h = embed(ids)
    for each layer:  h = h + Attn(RMSNorm(h));  h = h + MLP(RMSNorm(h))
    logits = RMSNorm(h) @ W_lm^T                      (W_lm = W_embed when embeddings are tied)

    RMSNorm(x)   = w * x / sqrt(mean(x^2) + eps), computed in fp32 and cast back (as transformers does)
    MLP(x)       = W_down (silu(W_gate x) * W_up x)
    Attn(x)      = W_o softmax(rope(q) rope(k)^T / sqrt(D) + mask) v,  q/k/v = W_{q,k,v} x (+ bias for Qwen2),
                   Qwen3 applies RMSNorm per head to q and k before rope; k/v have num_key_value_heads (GQA).
    rope(x)_t    = x * cos(t * f) + rotate_half(x) * sin(t * f), f = inverse frequencies (see `rope_inv_freq`)

Module and parameter names mirror transformers' minus its `model.` prefix, so HF checkpoints map 1:1
(see weights.py).

`Transformer.forward` covers every caller in atlas, each in its attention regime (atlas/model/attention.py,
chosen in one place): plain causal batches (`model(ids_BT)`), left- or right-padded batches
(`attention_mask_BT`), packed sequences (`cu_seqlens`), a KV cache (`KVCache`, which owns what it holds:
atlas/model/cache.py) in eager or static decode (fixed shapes: one compiled decode step replays, gpt-fast
style, CUDA graphs); explicit `positions_BT` override the regime's;
- `return_hidden=True` returns the final normed hidden states instead of logits, so trainers compute
  log-probabilities from hidden states and the LM head in chunks (atlas.kernels) without a [T, V] tensor.

`token_logprobs(hidden, targets, T)` is that LM-head path, the one every trainer uses: log softmax(z / T)
[target] with z = hidden @ W_lm^T computed in chunks of tokens (`atlas.kernels.linear_token_logprobs`).
Sharding is atlas.distributed's business alone: it registers `token_logprobs` and `generalized_jsd` as
FSDP forward methods (so the head is unsharded, cast and reduce-scattered as in forward) and sets
`bypass_block_hooks` while it holds the parameters unsharded for a generation (`ad.gathered`).

Training hooks: `activation_checkpointing = True` recomputes each block in backward
(`torch.utils.checkpoint` inside the block, so parameter names do not change); `init_weights()`
initialises parameters as transformers does and re-ties embeddings (after `to_empty` from the meta
device); the rope frequencies `inv_freq` stay fp32 whatever `.to(dtype)` is applied (in bf16 the angle
at position 8000 would be off by up to 1.4 rad).

Left out: dropout (atlas fine-tunes without it), sliding windows, attention sinks, MoE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from atlas.kernels import linear_generalized_jsd, linear_token_logprobs
from atlas.model.attention import AttnContext, attention_context
from atlas.model.cache import KVCache
from atlas.model.config import ModelConfig
from atlas.model.rope import apply_rope, rope_inv_freq

try:  # optional: flash-attn's varlen kernel for packed sequences on CUDA
    from flash_attn import flash_attn_varlen_func
except ImportError:
    flash_attn_varlen_func = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # at least fp32 (float64 stays float64)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.q_proj = nn.Linear(h, self.n_heads * d, bias=config.attention_bias)
        self.k_proj = nn.Linear(h, self.n_kv_heads * d, bias=config.attention_bias)
        self.v_proj = nn.Linear(h, self.n_kv_heads * d, bias=config.attention_bias)
        # Qwen2 puts bias on q/k/v only; Llama and Qwen3's attention_bias covers o_proj too
        self.o_proj = nn.Linear(self.n_heads * d, h, bias=config.attention_bias and config.model_type != "qwen2")
        if config.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps)
            self.k_norm = RMSNorm(d, config.rms_norm_eps)

    def forward(self, x_BTH: torch.Tensor, cos_BTD: torch.Tensor, sin_BTD: torch.Tensor, ctx: AttnContext,
                layer: int) -> torch.Tensor:
        B, T, _ = x_BTH.shape
        q = self.q_proj(x_BTH).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x_BTH).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x_BTH).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos_BTD, sin_BTD)
        k = apply_rope(k.transpose(1, 2), cos_BTD, sin_BTD)

        if ctx.cache is not None:
            k, v = ctx.cache.write(layer, k, v)

        if ctx.max_seqlen is not None:  # packed sequences through flash-attn varlen
            out = flash_attn_varlen_func(
                q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), ctx.cu_seqlens, ctx.cu_seqlens,
                ctx.max_seqlen, ctx.max_seqlen, causal=True,
            )
            out = out.unsqueeze(0)  # [1, T, H, D]
        elif ctx.segments is not None:  # packed sequences: causal within each (after its parent), never across
            parts = []
            for seg in ctx.segments:  # one SDPA call per group of sequences of equal (length, parent's length)
                keys, values = _rows(k, seg.idx_nL), _rows(v, seg.idx_nL)
                if seg.parent_nP is not None:  # the parent's keys and values first: shared, not recomputed
                    keys = torch.cat([_rows(k, seg.parent_nP), keys], dim=2)
                    values = torch.cat([_rows(v, seg.parent_nP), values], dim=2)
                o = F.scaled_dot_product_attention(_rows(q, seg.idx_nL), keys, values, attn_mask=seg.mask_LS,
                                                   is_causal=seg.mask_LS is None,
                                                   enable_gqa=self.n_heads != self.n_kv_heads)
                parts.append(o.transpose(0, 1).flatten(1, 2))  # [H, n * L, D]
            out = torch.cat(parts, 1).index_select(1, ctx.unpermute).transpose(0, 1)[None]  # [1, T, H, D]
        elif T == 1 and self.n_heads != self.n_kv_heads:
            # decode: one query per row, so each KV group's query heads can stand in the query-length axis
            # and SDPA runs with KV heads only (half the time of its GQA path on CPU; same math)
            group = self.n_heads // self.n_kv_heads
            out = F.scaled_dot_product_attention(q.reshape(B, self.n_kv_heads, group, self.head_dim), k, v,
                                                 attn_mask=ctx.mask)
            out = out.reshape(B, 1, self.n_heads, self.head_dim)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=ctx.mask, is_causal=ctx.is_causal, enable_gqa=self.n_heads != self.n_kv_heads
            ).transpose(1, 2)
        return self.o_proj(out.reshape(B, T, self.n_heads * self.head_dim))


def _rows(x_1hTD: torch.Tensor, idx_nL: torch.Tensor) -> torch.Tensor:
    """The packed row's positions idx [n, L] as n sequences: [n, h, L, D]."""
    n, L = idx_nL.shape
    return x_1hTD[0].index_select(1, idx_nL.flatten()).unflatten(1, (n, L)).transpose(0, 1)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, h, cos, sin, ctx, layer):
        if ctx.checkpoint:
            # inside the block, so FSDP2's hooks on it stay outside the recomputed region (as torchtitan's
            # wrapper-then-shard order has it) and parameter names carry no wrapper prefix
            return checkpoint(self._forward, h, cos, sin, ctx, layer, use_reentrant=False)
        return self._forward(h, cos, sin, ctx, layer)

    def _forward(self, h, cos, sin, ctx, layer):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, ctx, layer)
        return h + self.mlp(self.post_attention_layernorm(h))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.activation_checkpointing = False  # recompute each block in backward (training only)
        self.bypass_block_hooks = False  # call each block's forward directly, skipping module hooks
        self.init_buffers()
        self.init_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the non-persistent rope buffer (fp32): after building on the meta device, or moving."""
        inv_freq, self.rope_scale = rope_inv_freq(self.config, device=device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def init_weights(self) -> None:
        """Initialise every parameter as transformers does (normal(0, initializer_range), zero biases, unit
        norms) and tie the embeddings again: the step after `to_empty(device=...)` on a model built on the
        meta device, which allocates untied, uninitialised storage."""
        self.tie_weights()
        self.apply(self._init_weights)

    def _apply(self, fn, recurse=True):
        # .to(dtype) / .bfloat16() cast floating buffers too, and to_empty gives tied modules separate
        # storage: keep rope frequencies fp32 (recomputed where the model now lives) and the tie intact
        super()._apply(fn, recurse)
        self.tie_weights()
        self.init_buffers(self.inv_freq.device)
        return self

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def forward(
        self,
        input_ids_BT: torch.Tensor,
        *,
        positions_BT: torch.Tensor | None = None,
        attention_mask_BT: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
        parents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V] in the model's dtype, or with `return_hidden` the final normed hidden [B, T, H].

        attention_mask_BT: 1 for real tokens, 0 for padding (left or right); pads attend only to themselves.
        cu_seqlens: [S + 1] int32 cumulative lengths of S sequences packed into one row (B must be 1).
        parents: [S], with cu_seqlens: the earlier sequence each continues (a shared prefix), or -1.
        positions_BT: rope positions; by default the regime's (atlas.model.attention).
        cache: a KVCache; this call takes its next T slots of every row (`KVCache.advance`: in static mode
            one slot, T = 1) and writes them.
        """
        if input_ids_BT.dim() != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {tuple(input_ids_BT.shape)}")
        B, T = input_ids_BT.shape
        flash = flash_attn_varlen_func is not None and input_ids_BT.is_cuda and self._half()
        ctx, positions = attention_context(input_ids_BT, attention_mask_BT, cu_seqlens, cache, flash, parents)
        if positions_BT is not None:
            if positions_BT.shape != (B, T):
                raise ValueError(f"positions_BT must have shape {(B, T)}, got {tuple(positions_BT.shape)}")
            positions = positions_BT

        h = self.embed_tokens(input_ids_BT)
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = (emb.cos() * self.rope_scale).to(h.dtype), (emb.sin() * self.rope_scale).to(h.dtype)
        ctx.checkpoint = self.activation_checkpointing and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            h = layer.forward(h, cos, sin, ctx, i) if self.bypass_block_hooks else layer(h, cos, sin, ctx, i)
        h = self.norm(h)
        return h if return_hidden else self.lm_head(h)

    def token_logprobs(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        temperature: float = 1.0,
        *,
        return_entropy: bool = False,
        ignore_index: int = -100,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """log softmax(hidden @ W_lm^T / T)[targets] as fp32 [...] (and the entropy of that distribution),
        from the model's own LM head (tied or untied) in chunks of tokens: no [tokens x vocab] tensor.

        hidden [..., H] (from `forward(..., return_hidden=True)`), targets [...]; targets equal to
        ignore_index give 0 and no gradient. Differentiable in hidden and the head's weight.
        """
        return linear_token_logprobs(hidden, self.lm_head.weight, targets, temperature, ignore_index=ignore_index,
                                     return_entropy=return_entropy)

    def generalized_jsd(
        self,
        hidden: torch.Tensor,
        teacher_hidden: torch.Tensor,
        teacher_weight: torch.Tensor,
        beta: float = 0.5,
        temperature: float = 1.0,
        *,
        mask: torch.Tensor | None = None,
        normalize: bool = False,
        vocab_size: int | None = None,
    ) -> torch.Tensor:
        """Per-token generalized JSD between this model's next-token distribution and a teacher's, fp32
        [...], from both hidden states and LM heads in chunks (`atlas.kernels.linear_generalized_jsd`):
        neither [tokens x vocab] logits tensor exists. Gradients reach this model only. `vocab_size`
        keeps the first rows of both heads (embedding matrices padded past the tokenizer, and padded
        differently on the two sides, then compare the real tokens only). The teacher's head must be a
        whole tensor (atlas.distributed.root_unsharded holds a sharded teacher's so)."""
        weight = self.lm_head.weight
        if vocab_size is not None:
            weight, teacher_weight = weight[:vocab_size], teacher_weight[:vocab_size]
        return linear_generalized_jsd(hidden, weight, teacher_hidden, teacher_weight, beta, temperature, mask=mask,
                                      normalize=normalize)

    def _half(self) -> bool:
        return self.embed_tokens.weight.dtype in (torch.float16, torch.bfloat16)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype
