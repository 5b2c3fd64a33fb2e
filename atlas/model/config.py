"""Model configuration: one dataclass for the Llama 3.x, Qwen2/Qwen2.5 and Qwen3 decoders.

`ModelConfig.from_hf(config_dict)` reads a Hugging Face `config.json` in either style:
- transformers 5 writes `rope_parameters = {"rope_type", "rope_theta", ...scaling fields}`;
- hub checkpoints written by transformers 4.x carry top-level `rope_theta` and `rope_scaling`
  (whose type key is `rope_type` or the older `type`).
Both normalise to `rope_theta` + `rope_scaling` (None for plain RoPE). `to_hf()` writes the 4.x style,
which transformers 5 and vLLM both read.

What differs between the families, and is therefore a field here:
- Qwen2: bias on q/k/v projections (`attention_bias`), usually tied embeddings at small sizes;
- Qwen3: per-head RMSNorm on q and k (`qk_norm`), explicit `head_dim` != hidden / heads;
- Llama 3: `llama3` rope scaling, optional `attention_bias`/`mlp_bias`.

Left out, with a ValueError rather than a silent approximation: sliding-window attention, activations
other than SiLU, rope types other than default/linear/llama3/yarn (dynamic NTK, longrope), partial rotary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# Scaling fields each rope type needs; anything else in the dict is carried through untouched.
_ROPE_REQUIRED = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor",),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # None, or {"rope_type": one of ROPE_TYPES, ...that type's fields}
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False  # always True for qwen2 (q/k/v bias; its config.json has no flag for it)
    mlp_bias: bool = False
    qk_norm: bool = False  # derived: True exactly for qwen3
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    # the checkpoint's declared dtype ("bfloat16", ...): from_pretrained's default
    torch_dtype: str | None = None
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.model_type not in ARCHITECTURES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}: atlas implements {sorted(ARCHITECTURES)}"
            )
        # what defines the family is not optional: every Qwen2 has q/k/v bias, every Qwen3 q/k norms
        if self.model_type == "qwen2":
            self.attention_bias = True
        self.qk_norm = self.model_type == "qwen3"
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_scaling is not None:
            self.rope_scaling = _check_rope_scaling(self.rope_scaling)

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES.get(self.torch_dtype) if self.torch_dtype else None

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> ModelConfig:
        """Build from a Hugging Face config.json dict (transformers 4.x hub style or transformers 5 style)."""
        model_type = config.get("model_type")
        if model_type not in ARCHITECTURES:
            raise ValueError(
                f"unsupported model_type {model_type!r}: atlas implements {sorted(ARCHITECTURES)} "
                "(Qwen2/Qwen2.5, Qwen3, Llama 3.x)"
            )
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported hidden_act {act!r}: atlas's MLP is SwiGLU (silu)")
        _reject_sliding_window(config)
        theta, scaling = _read_rope(config)

        heads = config["num_attention_heads"]
        eos = config.get("eos_token_id")
        return cls(
            model_type=model_type,
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            max_position_embeddings=config.get("max_position_embeddings", 4096),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            attention_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            bos_token_id=config.get("bos_token_id"),
            eos_token_id=[] if eos is None else [eos] if isinstance(eos, int) else list(eos),
            pad_token_id=config.get("pad_token_id"),
            torch_dtype=_dtype_name(config.get("dtype") or config.get("torch_dtype")),
            initializer_range=config.get("initializer_range", 0.02),
        )

    def to_hf(self) -> dict[str, Any]:
        """The config.json transformers and vLLM read (transformers 4.x style, which 5.x also reads)."""
        eos = self.eos_token_id[0] if len(self.eos_token_id) == 1 else (self.eos_token_id or None)
        out: dict[str, Any] = {
            "architectures": [ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "initializer_range": self.initializer_range,
            "attention_dropout": 0.0,
            "use_cache": True,
        }
        if self.model_type == "llama":
            out.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        else:
            out.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_hidden_layers)
        if self.model_type == "qwen3":
            out["attention_bias"] = self.attention_bias
        if self.torch_dtype:
            out["torch_dtype"] = self.torch_dtype
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_rope(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = config.get("rope_parameters")
    if isinstance(params, dict) and params:
        if "full_attention" in params or "sliding_attention" in params:
            raise ValueError("per-layer-type rope_parameters are unsupported: atlas models have one rope")
        params = dict(params)
        theta = params.pop("rope_theta", config.get("rope_theta", 10000.0))
        scaling = params
    else:
        theta = config.get("rope_theta", 10000.0)
        scaling = dict(config.get("rope_scaling") or {})
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    scaling.pop("type", None)
    if scaling.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is unsupported: atlas rotates the whole head")
    scaling.pop("partial_rotary_factor", None)
    if not scaling or scaling.get("rope_type", "default") == "default":
        extra = set(scaling) - {"rope_type"}
        if extra:
            raise ValueError(f"rope_type 'default' takes no scaling fields, got {sorted(extra)}")
        return float(theta), None
    if scaling.get("rope_type") in ("llama3", "yarn"):
        # as transformers does: the pretraining length may sit at the top level, else it is the max length
        top = config.get("original_max_position_embeddings") or config.get("max_position_embeddings")
        scaling.setdefault("original_max_position_embeddings", top)
    return float(theta), scaling


def _check_rope_scaling(scaling: dict[str, Any]) -> dict[str, Any]:
    rope_type = scaling.get("rope_type")
    if rope_type not in ROPE_TYPES:
        raise ValueError(
            f"unsupported rope type {rope_type!r}: atlas implements {list(ROPE_TYPES)} "
            "(set rope_scaling/rope_parameters accordingly, or use a checkpoint without it)"
        )
    missing = [k for k in _ROPE_REQUIRED[rope_type] if scaling.get(k) is None]
    if missing:
        raise ValueError(f"rope type {rope_type!r} needs {missing} in rope_scaling/rope_parameters")
    return scaling


def _reject_sliding_window(config: dict[str, Any]) -> None:
    layer_types = config.get("layer_types") or []
    if config.get("use_sliding_window") or any(t != "full_attention" for t in layer_types):
        raise ValueError(
            "sliding-window attention is unsupported: set use_sliding_window=false (Qwen checkpoints ship it "
            "disabled) or use a model with full attention in every layer"
        )


def _dtype_name(value: Any) -> str | None:
    if value is None:
        return None
    name = str(value).removeprefix("torch.")
    return name if name in DTYPES else None
