"""A judge backend that runs atlas models in-process: tokenizer chat template + the native Sampler.

    client = LocalChatClient({"judge": (model, tokenizer)})
    rim = RIM(RIMConfig(small_model="judge", large_model="judge"), client=client)

`models` maps the names RIMConfig uses (small_model, large_model) to (atlas Transformer, atlas Tokenizer);
both tiers may name the same pair. `chat_batch` renders every request with the tokenizer's chat template
(generation prompt on) and batches all pending requests into one `Sampler.generate` call per
(model, temperature, max_tokens): SamplingParams carry one temperature, so tier 1 at three temperatures
is three calls, each holding every item of the batch. Replies are decoded without special tokens.

A request that cannot fit (prompt + max_tokens > the model's max_position_embeddings) becomes an error
result on its own, so one long item does not sink the batch. `latency_s` is the wall time of the generate
call that served the request, shared by every request in it. With `seed` set, call k of this client uses
seed + k, so a run is reproducible and the three temperatures do not share their random draws.

Left out: sampling settings other than temperature (top-p/top-k stay off, as an API judge is called),
stop strings (generation ends at the tokenizer's/model's EOS or max_tokens), and sharing one prefill
across the temperatures of the same prompt.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from atlas.reward.clients import ChatRequest, ChatResult
from atlas.sampler import Sampler, SamplingParams


class LocalChatClient:
    def __init__(self, models: dict[str, tuple[Any, Any]], seed: int | None = None):
        if not models:
            raise ValueError("LocalChatClient needs models={'name': (atlas model, atlas tokenizer)}")
        for name, (_, tokenizer) in models.items():
            if tokenizer.chat_template is None:  # every request is rendered with it: say so before judging
                raise ValueError(
                    f"the tokenizer for {name!r} has no chat template; load it with "
                    "Tokenizer.from_pretrained(path, chat_template='chatml' or the template's Jinja text)")
        self.models = {name: (Sampler(model, tokenizer), model, tokenizer)
                       for name, (model, tokenizer) in models.items()}
        self.seed = seed
        self.generate_calls = 0
        self._lock = threading.Lock()  # one generate at a time: the model is shared

    def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        groups: dict[tuple[str, float, int], list[tuple[int, list[int]]]] = {}
        for idx, req in enumerate(requests):
            if req.model not in self.models:
                results[idx] = ChatResult(None, error=f"model {req.model!r} is not loaded; LocalChatClient "
                                                      f"serves {sorted(self.models)}", attempts=0)
                continue
            _, model, tokenizer = self.models[req.model]
            ids = tokenizer.apply_chat_template(req.message_dicts(), add_generation_prompt=True, tokenize=True)
            limit = model.config.max_position_embeddings
            if len(ids) + req.max_tokens > limit:
                results[idx] = ChatResult(
                    None, error=f"prompt of {len(ids)} tokens + max_tokens {req.max_tokens} exceeds the "
                                f"model's max_position_embeddings ({limit}); lower RIMConfig.max_tokens",
                    prompt_tokens=len(ids), attempts=0)
                continue
            groups.setdefault((req.model, req.temperature, req.max_tokens), []).append((idx, ids))

        for (name, temperature, max_tokens), members in groups.items():
            sampler, _, tokenizer = self.models[name]
            with self._lock:
                seed = None if self.seed is None else self.seed + self.generate_calls
                self.generate_calls += 1
                params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, seed=seed)
                start = time.perf_counter()
                outs = sampler.generate([ids for _, ids in members], params)
                latency = time.perf_counter() - start
            assert len(outs) == len(members) and all(o.prompt_index == k for k, o in enumerate(outs))
            for (idx, ids), out in zip(members, outs):
                results[idx] = ChatResult(
                    tokenizer.decode(out.token_ids, skip_special_tokens=True), latency_s=latency,
                    prompt_tokens=len(ids), completion_tokens=len(out.token_ids),
                    extra={"finish_reason": out.finish_reason, "model": name},
                )
        return results
