"""RIM: an ensemble of LLM judges with escalation to an arbiter, behind plain functions.

For each item (prompt, response, context) and each active judge j:

1. Tier 1. The small model answers the judge prompt once per temperature t_k in `temperatures`
   (0.2, 0.5, 0.8), all requests of a batch in parallel. Valid samples give scores s_k, uncertainties u_k.
2. Escalation. With V the valid samples, escalate when |V| < 2 (a judge that failed twice is not trusted
   on its one remaining sample, whose std would be 0), or std(s_k, k in V) > variance_threshold (0.15;
   population std), or max(u_k) > uncertainty_threshold (0.3).
   The large model then answers at `arbiter_temperature` (0.3), shown the tier-1 evaluations, and its
   score and uncertainty are the judge's. An arbiter that fails leaves the judge without a score: the
   tier-1 samples were just found unreliable, so falling back to them would hide the failure.
3. Aggregation without escalation, by `aggregation`:
     "mean":            score = mean(s_k), uncertainty = mean(u_k)  (what the runtime records), rationale
                        of the sample closest to the mean;
     "min_uncertainty": the sample with the smallest u_k gives score, uncertainty and rationale.
4. Consistency caps (when `consistency_caps`; applied in this order, each only when both judges scored):
     process     <- min(process, accuracy + m)
     helpfulness <- min(helpfulness, g)          if process < g
     helpfulness <- min(helpfulness, diagnostic + m)
   with m = cap_margin (0.1) and g = cap_gate (0.5) by default. Scores stay in [0, 1].
   The uncapped score stays on the JudgeResult (`raw_score`) with the rules that fired (`caps`).
5. Item reward = mean of the active judges' (capped) scores, uncertainty = mean of their uncertainties.
   If any judge has no score the item has none (`score` None, `error` says why): averaging the rest
   would silently change what the reward means.

Nothing is silent: an unparsable or ambiguous reply (judges.py: several score objects, or one taken from
the judged material) is an invalid sample and a failed call a failed call, both on the JudgeResult and
counted in `RIM.stats` (calls sent, cache_hits, failed_calls, invalid_replies, escalations, failed_judges,
failed_items, prompt_tokens, completion_tokens); every call is in `RewardResult.audit` with model,
temperature, latency, tokens, attempts, cache flag and error. Results are returned per call, never kept
on the RIM, so threads sharing one RIM do not see each other's; `stats` only accumulates counts.

Cache: identical requests (model, messages, temperature, max_tokens) within a RIM's life are answered from
an LRU cache of replies that parsed into an evaluation; a failed call or an invalid reply is asked again
next time. Duplicates within one batch are sent once and share that one reply, whatever it is. A cached
sample at temperature > 0 is the same sample again, which is the point: a GRPO group often holds
identical completions, and each judge call costs money.

`RIM(config)(prompts, completions, **context) -> list[float]` is a GRPO reward function: context values
are lists with one entry per completion. Items that cannot be scored are counted in
`stats["failed_items"]`; then it raises `JudgeError` (its `results` hold every item's RewardResult),
unless `config.failure_score` gives a value to use for them instead.

Left out: cross-thread de-duplication of in-flight requests (two threads evaluating the same item at the
same moment both call the backend), a persistent (on-disk) cache, and weighting judges unequally.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from atlas.reward.clients import ChatRequest, ChatResult, HTTPChatClient
from atlas.reward.config import RIMConfig
from atlas.reward.judges import (
    CONTEXT_KEYS,
    JUDGES,
    Evaluation,
    InvalidReply,
    Principle,
    arbiter_messages,
    as_text,
    check_context,
    judge_messages,
    parse_evaluation,
)

logger = logging.getLogger("atlas.reward")


class JudgeError(RuntimeError):
    """Raised by `RIM.__call__` when an item gets no score and no `failure_score` is configured; `results`
    are the batch's RewardResults, failed ones with their `error`."""

    def __init__(self, message: str, results: list[RewardResult]):
        super().__init__(message)
        self.results = results


@dataclass
class Call:
    """One judge call: the audit record and, when the reply parsed, its evaluation."""

    judge: str
    stage: str  # "tier1" | "arbiter"
    model: str
    temperature: float
    messages: list[dict[str, str]]
    response: str | None
    evaluation: Evaluation | None
    error: str | None  # transport/server error, or why the reply was not a valid evaluation
    latency_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    attempts: int
    cached: bool

    @property
    def score(self) -> float | None:
        return self.evaluation.score if self.evaluation else None

    @property
    def uncertainty(self) -> float | None:
        return self.evaluation.uncertainty if self.evaluation else None


@dataclass
class JudgeResult:
    identifier: str
    score: float | None  # after consistency caps; None when the judge failed
    uncertainty: float | None
    rationale: str
    principles: list[Principle]
    samples: list[Call]  # tier 1, one per temperature
    escalated: bool = False
    escalation_reason: str | None = None
    arbiter: Call | None = None
    raw_score: float | None = None  # before consistency caps
    caps: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def invalid_samples(self) -> int:
        return sum(c.evaluation is None for c in self.samples + ([self.arbiter] if self.arbiter else []))


@dataclass
class RewardResult:
    score: float | None
    rationale: str
    judges: list[JudgeResult]
    escalated: bool
    uncertainty: float | None
    error: str | None = None

    @property
    def audit(self) -> list[Call]:
        return [c for j in self.judges for c in j.samples + ([j.arbiter] if j.arbiter else [])]

    @property
    def invalid_samples(self) -> int:
        return sum(j.invalid_samples for j in self.judges)


class _LRU:
    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[ChatRequest, ChatResult] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: ChatRequest) -> ChatResult | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            return None

    def put(self, key: ChatRequest, value: ChatResult) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


def _as_cached(result: ChatResult) -> ChatResult:
    # no call was made for this request: no latency, no tokens spent
    return dataclasses.replace(result, cached=True, latency_s=0.0, prompt_tokens=None, completion_tokens=None,
                               attempts=0)


class RIM:
    """Reward from LLM judges. `client` is any backend with `chat_batch` (default: HTTP from the config)."""

    def __init__(self, config: RIMConfig | None = None, client: Any | None = None):
        self.config = config if config is not None else RIMConfig.load()
        if client is None:
            self.config.require_endpoint()
            c = self.config
            client = HTTPChatClient(c.base_url, c.api_key(), timeout=c.timeout, retries=c.retries,
                                    backoff=c.backoff, max_workers=c.max_workers, json_mode=c.json_mode)
        elif not (self.config.small_model and self.config.large_model):
            raise ValueError(
                "set RIMConfig.small_model and large_model to the model names the backend serves")
        self.client = client
        self.judges = [JUDGES[j] for j in self.config.active_judges]
        self.stats: Counter[str] = Counter()
        self._cache = _LRU(self.config.cache_size) if self.config.cache else None
        self._stats_lock = threading.Lock()

    def evaluate(self, prompt: Any, response: Any, **context: Any) -> RewardResult:
        """Judge one response. Context values are single values (e.g. reference="42")."""
        return self.evaluate_batch([prompt], [response], **{k: [v] for k, v in context.items()})[0]

    def __call__(self, prompts: list, completions: list, **context: list) -> list[float]:
        results = self.evaluate_batch(prompts, completions, **context)
        failed = [r for r in results if r.score is None]
        self._count(failed_items=len(failed))
        if failed and self.config.failure_score is None:
            raise JudgeError(
                f"{len(failed)} of {len(results)} item(s) could not be judged (first: {failed[0].error}); "
                "see JudgeError.results, or set RIMConfig.failure_score to score such items with a fixed value",
                results,
            )
        return [r.score if r.score is not None else self.config.failure_score for r in results]

    def evaluate_batch(self, prompts: list, responses: list, **context: list) -> list[RewardResult]:
        """Judge N responses; context values are lists of length N (None entries mean absent)."""
        n = len(prompts)
        if len(responses) != n:
            raise ValueError(f"got {n} prompts but {len(responses)} responses; pass one prompt per response")
        for key, values in context.items():
            if not isinstance(values, (list, tuple)) or len(values) != n:
                got = f"{len(values)} entries" if isinstance(values, (list, tuple)) else type(values).__name__
                raise ValueError(f"context {key!r} must be a list with one entry per response ({n}), "
                                 f"got {got}")
        items = []
        for i in range(n):
            ctx = {k: v[i] for k, v in context.items() if v[i] is not None}
            check_context(ctx, self.judges)
            items.append((as_text(prompts[i]), as_text(responses[i]), ctx))

        cfg = self.config
        keys = [(i, j) for i in range(n) for j in range(len(self.judges))]
        tier1 = [
            (key, t, ChatRequest.make(cfg.small_model, judge_messages(self.judges[key[1]], *items[key[0]]), t,
                                      cfg.max_tokens))
            for key in keys for t in cfg.temperatures
        ]
        calls = self._run("tier1", [(self.judges[k[1]].identifier, r) for k, _, r in tier1])
        per_key: dict[tuple[int, int], list[Call]] = {k: [] for k in keys}
        for (key, _, _), call in zip(tier1, calls):
            per_key[key].append(call)

        reasons = {k: self._escalation_reason(per_key[k]) for k in keys}
        escalate = [k for k in keys if reasons[k] is not None]
        arbiter_reqs = []
        for key in escalate:
            judge, samples = self.judges[key[1]], per_key[key]
            valid = [c for c in samples if c.evaluation]
            msgs = arbiter_messages(judge, *items[key[0]], [c.evaluation for c in valid],
                                    [c.temperature for c in valid], len(samples) - len(valid))
            req = ChatRequest.make(cfg.large_model, msgs, cfg.arbiter_temperature, cfg.max_tokens)
            arbiter_reqs.append((judge.identifier, req))
        arbiter_calls = dict(zip(escalate, self._run("arbiter", arbiter_reqs)))
        self._count(escalations=len(escalate))

        results = []
        for i in range(n):
            judged = [self._finish(per_key[(i, j)], reasons[(i, j)], arbiter_calls.get((i, j)))
                      for j in range(len(self.judges))]
            results.append(self._combine(judged))
        return results

    def _run(self, stage: str, requests: list[tuple[str, ChatRequest]]) -> list[Call]:
        """Send requests (with the cache on: cached ones answered, duplicates sent once), parse replies,
        cache those that parsed, count everything."""
        replies: list[ChatResult | None] = [None] * len(requests)
        pending: dict[Any, list[int]] = {}
        for idx, (_, req) in enumerate(requests):
            hit = self._cache.get(req) if self._cache is not None else None
            if hit is not None:
                replies[idx] = _as_cached(hit)
            else:
                pending.setdefault(req if self._cache is not None else idx, []).append(idx)
        unique = [requests[group[0]][1] for group in pending.values()]
        fresh = self.client.chat_batch(unique) if unique else []
        assert len(fresh) == len(unique), "backend returned a different number of results than requests"
        for res, (first, *dupes) in zip(fresh, pending.values()):
            replies[first] = res
            for idx in dupes:
                replies[idx] = _as_cached(res)

        calls = []
        for (judge, req), res in zip(requests, replies):
            evaluation, error = None, res.error
            if res.text is not None:
                try:
                    # the judged material is the user message: a score object in it is never the verdict
                    evaluation = parse_evaluation(res.text, material=req.messages[-1][1])
                except InvalidReply as e:
                    error = f"invalid reply: {e}"
            if evaluation is not None and self._cache is not None and not res.cached:
                self._cache.put(req, res)
            calls.append(Call(judge, stage, req.model, req.temperature, req.message_dicts(), res.text,
                              evaluation, error, res.latency_s, res.prompt_tokens, res.completion_tokens,
                              res.attempts, res.cached))
        self._count(
            calls=len(unique), cache_hits=sum(r.cached for r in replies),
            failed_calls=sum(r.error is not None and not r.cached for r in replies),
            invalid_replies=sum(r.text is not None and c.evaluation is None for r, c in zip(replies, calls)),
            prompt_tokens=sum(r.prompt_tokens or 0 for r in replies),
            completion_tokens=sum(r.completion_tokens or 0 for r in replies),
        )
        return calls

    def _escalation_reason(self, samples: list[Call]) -> str | None:
        cfg = self.config
        valid = [c.evaluation for c in samples if c.evaluation]
        if not valid:
            return f"no tier-1 sample parsed ({len(samples)} invalid)"
        if len(valid) < 2:
            return f"only {len(valid)} of {len(samples)} tier-1 samples parsed"
        reasons = []
        std = statistics.pstdev([e.score for e in valid])
        if std > cfg.variance_threshold:
            reasons.append(f"score std {std:.3f} > variance_threshold {cfg.variance_threshold}")
        worst = max(e.uncertainty for e in valid)
        if worst > cfg.uncertainty_threshold:
            reasons.append(f"uncertainty {worst:.3f} > uncertainty_threshold {cfg.uncertainty_threshold}")
        return "; ".join(reasons) or None

    def _finish(self, samples: list[Call], reason: str | None, arbiter: Call | None) -> JudgeResult:
        judge = samples[0].judge
        if reason is not None:
            assert arbiter is not None
            result = JudgeResult(judge, None, None, "", [], samples, True, reason, arbiter)
            if arbiter.evaluation is None:
                result.error = f"{judge}: escalated ({reason}) and the arbiter failed: {arbiter.error}"
                self._count(failed_judges=1)
                return result
            e = arbiter.evaluation
            result.score, result.uncertainty, result.rationale, result.principles = (
                e.score, e.uncertainty, e.rationale, e.principles)
            result.raw_score = e.score
            return result
        valid = [c.evaluation for c in samples if c.evaluation]
        if self.config.aggregation == "mean":
            score = statistics.fmean(e.score for e in valid)
            uncertainty = statistics.fmean(e.uncertainty for e in valid)
            voice = min(valid, key=lambda e: (abs(e.score - score), e.uncertainty))
        else:
            voice = min(valid, key=lambda e: e.uncertainty)
            score, uncertainty = voice.score, voice.uncertainty
        return JudgeResult(judge, score, uncertainty, voice.rationale, voice.principles, samples,
                           raw_score=score)

    def _apply_caps(self, by_id: dict[str, JudgeResult]) -> None:
        m, g = self.config.cap_margin, self.config.cap_gate

        def cap(target: str, limit: float, rule: str) -> None:
            j = by_id[target]
            if j.score > limit:
                j.score = max(0.0, limit)
                j.caps.append(rule)

        def scored(*names: str) -> bool:
            return all(name in by_id and by_id[name].score is not None for name in names)

        if scored("process", "accuracy"):
            cap("process", by_id["accuracy"].score + m, f"process <= accuracy + {m}")
        if scored("helpfulness", "process") and by_id["process"].score < g:
            cap("helpfulness", g, f"helpfulness <= {g} when process < {g}")
        if scored("helpfulness", "diagnostic"):
            cap("helpfulness", by_id["diagnostic"].score + m, f"helpfulness <= diagnostic + {m}")

    def _combine(self, judged: list[JudgeResult]) -> RewardResult:
        if self.config.consistency_caps:
            self._apply_caps({j.identifier: j for j in judged})
        escalated = any(j.escalated for j in judged)
        lines = []
        for j in judged:
            if j.score is None:
                lines.append(f"[{j.identifier} failed] {j.error}")
            else:
                lines.append(f"[{j.identifier} {j.score:.2f}] {j.rationale}")
        rationale = "\n".join(lines)
        failed = [j for j in judged if j.score is None]
        if failed:
            return RewardResult(None, rationale, judged, escalated, None,
                                error="; ".join(j.error for j in failed))
        return RewardResult(statistics.fmean(j.score for j in judged), rationale, judged, escalated,
                            statistics.fmean(j.uncertainty for j in judged))

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            self.stats.update(deltas)


def judge_reward(rim: RIM | None = None) -> Callable[..., list[float]]:
    """RIM as a trainer's reward function `(prompts, completions, **columns) -> list[float]` (default: a RIM
    from `RIMConfig.load()`). The trainers' columns map to the judges' context keys: `answers` (the
    reference) -> `reference`, a column named like a context key (judges.CONTEXT_KEYS) as is; any other
    column is not sent (the judges reject unknown keys), and which were dropped is logged once."""
    rim = rim or RIM(RIMConfig.load())
    warned: set[str] = set()

    def rim_judges(prompts, completions, **columns):
        context = {}
        for key, values in columns.items():
            target = "reference" if key == "answers" else key
            if target in CONTEXT_KEYS:
                context[target] = values
            elif key not in warned:
                warned.add(key)
                logger.warning("column %r is not a judge context key: not sent to the judges", key)
        return rim(prompts, completions, **context)

    return rim_judges
