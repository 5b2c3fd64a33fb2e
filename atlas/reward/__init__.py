"""Rewards: RIM judges (LLM ensembles with escalation) and rule rewards, all behind plain functions.

    import atlas.reward as ar
    ar.score(prompt, response, reference="42")          # -> RewardResult, default config (env / YAML)
    rim = ar.RIM(ar.RIMConfig.load("rim.yaml"))
    rim.evaluate(prompt, response, **context)            # -> RewardResult
    rim(prompts, completions, **context)                 # -> list[float], a GRPO reward function
    ar.judge_reward(rim)                                 # the same, taking a trainer's columns as they come
    ar.answer_match(prompts, completions, answers=[...]) # rule rewards share that call shape

`score` builds one RIM from `RIMConfig.load()` on first use and keeps it, so its cache lasts the process.
See rim.py for the ensemble/escalation/aggregation math, judges.py for the prompts, clients.py for the
HTTP backend and local.py for the in-process (atlas model + Sampler) backend.
"""

from __future__ import annotations

import threading
from typing import Any

from atlas.reward.clients import ChatRequest, ChatResult, HTTPChatClient
from atlas.reward.config import RIMConfig
from atlas.reward.judges import JUDGES, InvalidReply, parse_evaluation
from atlas.reward.rim import RIM, Call, JudgeError, JudgeResult, RewardResult, judge_reward
from atlas.reward.rules import (
    answer_match,
    exact_match,
    extract_final_answer,
    leaks_answer,
    length_penalty,
    numbers_in,
    tags_present,
)

__all__ = [
    "score", "RIM", "RIMConfig", "RewardResult", "judge_reward", "JudgeResult", "Call", "JudgeError", "JUDGES",
    "HTTPChatClient", "ChatRequest", "ChatResult", "InvalidReply", "parse_evaluation",
    "exact_match", "answer_match", "tags_present", "length_penalty", "extract_final_answer", "leaks_answer",
    "numbers_in",
]

_default: RIM | None = None
_default_lock = threading.Lock()


def score(prompt: Any, response: Any, **context: Any) -> RewardResult:
    """Judge one response with the default RIM (configured from $ATLAS_REWARD_CONFIG and ATLAS_JUDGE_*)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = RIM(RIMConfig.load())
        rim = _default
    return rim.evaluate(prompt, response, **context)
