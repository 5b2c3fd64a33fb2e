"""Held-out evaluation by generation: the success rate and completion length of greedy answers.

    greedy_eval(model, tokenizer, eval_examples, reward_fn, max_new_tokens=64)
    -> {"success_rate": 0.42, "mean_tokens": 11.3, "reward_mean": 0.42, "n": 200}

Each example's prompt is rendered with the chat template (generation prompt added), the model answers
greedily through the Sampler (temperature 0: the evaluation is deterministic), and the reward function
scores the answers with the arguments training gives it (the rollouts' `RolloutBatch`: the prompt as
the example gives it, its columns), so a prompt-sensitive judge scores a completion alike in both (a
rule reward or RIM: any reward function of the trainers' shape). With a `toolbox` the answers are an
agent's, through the same tool loop as training (atlas.train.agent; the reward sees the final message and
the `trajectories` column), and the result adds the tool metrics GRPO logs (atlas.train.agent.tool_metrics:
turns_mean, tool_calls_mean, tool_error_frac and by reason, ...). A
completion succeeds when its score is >= `threshold` (0.5: a rule reward's 1 or a judge's "mostly
right"). `mean_tokens` counts the tokens the model generated, the end-of-turn token included (an agent's
over all its turns, tool results not included). Under torchrun every rank answers its share of the
examples and the counts are summed, so the result does not depend on the world size; every rank makes
the same number of sampling calls (the last share is padded with a repeated prompt whose answer is
discarded), because each call all-gathers an FSDP2 model. GRPO's evaluation, SFT's and GKD's
success_delta all use this function.

Left out: sampling-based pass@k, per-example results on disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import atlas.distributed as ad
from atlas.sampler import Sampler, SamplingParams
from atlas.train.agent import Toolbox, agent_rollouts, tool_metrics, tool_sums
from atlas.train.rollout import sample_rollouts


def greedy_eval(model, tokenizer, examples: Sequence[Any], reward_fn: Callable[..., list[float]], *,
                max_new_tokens: int, batch_size: int = 64, threshold: float = 0.5,
                toolbox: Toolbox | None = None) -> dict[str, float]:
    """Success rate, mean reward and mean generated tokens over `examples`; see the module docstring."""
    if not examples:
        raise ValueError("greedy_eval needs at least one example")
    mine = list(range(ad.rank(), len(examples), ad.world_size()))
    calls = math.ceil(math.ceil(len(examples) / ad.world_size()) / batch_size)
    sampler = Sampler(model, tokenizer)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
    sums: dict[str, float] = {"success": 0.0, "reward": 0.0, "tokens": 0.0, "n": 0.0}
    if toolbox is not None:
        sums.update(dict.fromkeys(tool_sums([]), 0.0))
    for c in range(calls):
        chunk = mine[c * batch_size:(c + 1) * batch_size]
        padded = chunk or [0]  # an empty share still joins the call (its all-gather)
        if toolbox is None:
            batch = sample_rollouts(model, tokenizer, examples, params, (0,), sampler, mine=padded)
        else:
            batch = agent_rollouts(model, tokenizer, examples, params, (0,), toolbox, sampler, mine=padded)
        if not chunk:
            continue
        scores = list(reward_fn(batch.prompts, batch.completions, **batch.columns))
        if len(scores) != len(chunk):
            raise ValueError(f"the reward function returned {len(scores)} scores for {len(chunk)} completions")
        for key, value in (("success", sum(s >= threshold for s in scores)), ("reward", sum(scores)),
                           ("tokens", sum(r.sampled for r in batch.rollouts)), ("n", len(chunk)),
                           *(tool_sums(batch.rollouts).items() if toolbox is not None else ())):
            sums[key] += float(value)
    sums = ad.all_reduce_sums(sums)
    n = sums["n"]
    out = {"success_rate": sums["success"] / n, "reward_mean": sums["reward"] / n, "mean_tokens": sums["tokens"] / n,
           "n": int(n)}
    if toolbox is not None:
        out.update(tool_metrics(sums, n))
    return out
