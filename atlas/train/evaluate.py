"""Held-out evaluation by generation: the success rate and completion length of greedy answers.

    greedy_eval(model, tokenizer, eval_examples, reward_fn, max_new_tokens=64)
    -> {"success_rate": 0.42, "mean_tokens": 11.3, "reward_mean": 0.42, "n": 200}

Each example's prompt is rendered with the chat template (generation prompt added), the model answers
greedily through the Sampler (temperature 0: the evaluation is deterministic), the completions are
decoded without special tokens, and the reward function scores them with the arguments training gives
it (`atlas.train.data.reward_inputs`: the prompt as the example gives it, its columns), so a
prompt-sensitive judge scores a completion alike in both (a rule reward or RIM: any reward function of
the trainers' shape). A completion succeeds when its score
is >= `threshold` (0.5: a rule reward's 1 or a judge's "mostly right"). `mean_tokens` counts generated
tokens, the end-of-turn token included. Under torchrun every rank answers its share of the examples and
the counts are summed, so the result does not depend on the world size; every rank makes the same number
of `generate` calls (the last share is padded with a repeated prompt whose answer is discarded), because
each call all-gathers an FSDP2 model. GRPO's example and GKD's success_delta both use this function.

Left out: sampling-based pass@k, per-example results on disk (the caller has the completions if it
needs them: `greedy_answers`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

import atlas.distributed as ad
from atlas.sampler import Sampler, SamplingParams
from atlas.train.data import prompt_ids, reward_inputs


def greedy_answers(model, tokenizer, examples: Sequence[Any], max_new_tokens: int,
                   batch_size: int = 64) -> list[tuple[int, str, int]]:
    """This rank's share of the examples answered greedily: (example index, completion text, tokens)."""
    mine = list(range(ad.rank(), len(examples), ad.world_size()))
    calls = math.ceil(math.ceil(len(examples) / ad.world_size()) / batch_size)
    sampler = Sampler(model, tokenizer)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
    out = []
    for c in range(calls):
        chunk = mine[c * batch_size:(c + 1) * batch_size]
        padded = chunk or [0]  # an empty share still joins the call (its all-gather)
        ids = [prompt_ids(tokenizer, examples[i]) for i in padded]
        completions = sampler.generate(ids, params)
        texts = tokenizer.decode_batch([o.token_ids for o in completions], skip_special_tokens=True)
        out += [(i, t, len(o.token_ids)) for i, t, o in zip(chunk, texts, completions)]
    return out


def greedy_eval(model, tokenizer, examples: Sequence[Any], reward_fn: Callable[..., list[float]], *,
                max_new_tokens: int, batch_size: int = 64, threshold: float = 0.5) -> dict[str, float]:
    """Success rate, mean reward and mean completion tokens over `examples`; see the module docstring."""
    if not examples:
        raise ValueError("greedy_eval needs at least one example")
    answers = greedy_answers(model, tokenizer, examples, max_new_tokens, batch_size)
    scores = []
    if answers:
        prompts, columns = reward_inputs([examples[i] for i, _, _ in answers])
        scores = reward_fn(prompts, [t for _, t, _ in answers], **columns)
        if len(scores) != len(answers):
            raise ValueError(f"the reward function returned {len(scores)} scores for {len(answers)} completions")
    sums = torch.tensor([float(sum(s >= threshold for s in scores)), float(sum(scores)),
                         float(sum(n for _, _, n in answers)), float(len(answers))], dtype=torch.float64)
    success, reward, tokens, n = ad.all_reduce(sums.to(ad.device())).tolist()
    return {"success_rate": success / n, "reward_mean": reward / n, "mean_tokens": tokens / n, "n": int(n)}
