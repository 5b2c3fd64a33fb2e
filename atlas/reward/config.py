"""RIMConfig: the judges' settings, from code, a YAML file, or environment variables.

Fields: the ensemble (temperatures, variance_threshold, uncertainty_threshold, small_model, large_model,
active_judges, max_workers), the transport (base_url, api_key_env, timeout, retries, backoff, json_mode),
the cache, the aggregation rule and the consistency caps.

`RIMConfig.load(path=None)` builds the default configuration: the dataclass defaults, then the keys of the
YAML file at `path` (or at $ATLAS_REWARD_CONFIG), then these environment variables when set, which win
(a deployment overrides a checked-in file, not the other way round):

    ATLAS_JUDGE_BASE_URL   -> base_url     (e.g. http://localhost:8000/v1)
    ATLAS_JUDGE_MODEL      -> small_model  (the tier-1 judge)
    ATLAS_ARBITER_MODEL    -> large_model  (the arbiter)
    ATLAS_JUDGE_API_KEY    -> read at call time through `api_key_env`, never stored in the config

The YAML file is a flat mapping of field names, read and checked by atlas.config like every other config
(types checked where the config is made, an unknown key named with the nearest field).
`require_endpoint()` raises a ValueError naming the variable or key to set when the HTTP backend lacks
its endpoint or models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from atlas.config import check_types, from_dict, read_yaml
from atlas.reward.judges import JUDGES

ENV_FIELDS = {
    "ATLAS_JUDGE_BASE_URL": "base_url",
    "ATLAS_JUDGE_MODEL": "small_model",
    "ATLAS_ARBITER_MODEL": "large_model",
}


@dataclass
class RIMConfig:
    base_url: str | None = None
    small_model: str | None = None
    large_model: str | None = None
    api_key_env: str = "ATLAS_JUDGE_API_KEY"
    # the default judges work on a bare prompt/response pair; the others need context (see judges.py)
    active_judges: tuple[str, ...] = ("accuracy", "process")
    temperatures: tuple[float, ...] = (0.2, 0.5, 0.8)
    arbiter_temperature: float = 0.3
    variance_threshold: float = 0.15
    uncertainty_threshold: float = 0.3
    aggregation: str = "mean"  # "mean" (as the runtime records it) | "min_uncertainty" (the surest sample's)
    consistency_caps: bool = True
    cap_margin: float = 0.1  # process <= accuracy + margin; helpfulness <= diagnostic + margin
    cap_gate: float = 0.5  # helpfulness <= gate when process < gate
    max_tokens: int = 1024
    max_workers: int = 16
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 0.5
    json_mode: bool = True
    cache: bool = True
    cache_size: int = 16384
    # None: a batch with an unscorable item raises JudgeError from RIM.__call__; a float is used instead
    # for such items (and counted in RIM.stats["failed_items"]).
    failure_score: float | None = None

    def __post_init__(self) -> None:
        check_types(self)
        unknown = [j for j in self.active_judges if j not in JUDGES]
        if unknown or not self.active_judges:
            raise ValueError(
                f"active_judges {list(self.active_judges)}: choose one or more of {list(JUDGES)}")
        if len(set(self.active_judges)) != len(self.active_judges):
            raise ValueError(f"active_judges lists a judge twice: {list(self.active_judges)}")
        if len(self.temperatures) < 2 or any(t < 0 for t in self.temperatures):
            raise ValueError(
                f"temperatures must be two or more non-negative numbers, got {self.temperatures}: RIM escalates "
                "to the arbiter whenever fewer than two tier-1 samples are valid")
        if self.aggregation not in ("mean", "min_uncertainty"):
            raise ValueError(f"aggregation must be 'mean' or 'min_uncertainty', got {self.aggregation!r}")
        for name in ("variance_threshold", "uncertainty_threshold", "cap_margin", "cap_gate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.failure_score is not None and not 0.0 <= self.failure_score <= 1.0:
            raise ValueError(f"failure_score must be None or lie in [0, 1], got {self.failure_score}")
        if self.max_tokens < 1 or self.max_workers < 1 or self.cache_size < 1:
            raise ValueError("max_tokens, max_workers and cache_size must be >= 1")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> RIMConfig:
        return from_dict(cls, {**read_yaml(path), **overrides})

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, **overrides) -> RIMConfig:
        """Defaults <- YAML (`path` or $ATLAS_REWARD_CONFIG) <- ATLAS_JUDGE_* env vars <- `overrides`."""
        path = path or os.environ.get("ATLAS_REWARD_CONFIG")
        data = read_yaml(path) if path else {}
        for var, name in ENV_FIELDS.items():
            if os.environ.get(var):
                data[name] = os.environ[var]
        return from_dict(cls, {**data, **overrides})

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def require_endpoint(self) -> None:
        """The HTTP backend needs an endpoint and both models; say exactly what to set."""
        missing = [
            f"{var} (or '{name}' in the YAML config)"
            for var, name in ENV_FIELDS.items() if not getattr(self, name)
        ]
        if missing:
            raise ValueError(
                "no judge endpoint configured: set " + ", ".join(missing)
                + "; or pass RIMConfig(base_url=..., small_model=..., large_model=...)"
            )
