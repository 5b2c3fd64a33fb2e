"""Agent rollouts: trajectories sampled turn by turn through tools, on the trainer's own model, token-exact.

    toolbox = Toolbox(tokenizer, tools=[multiply], max_turns=8, timeout_s=30, max_output_tokens=512)
    batch = agent_rollouts(model, tokenizer, examples, params, (seed, step), toolbox)     # a RolloutBatch

Each rank rolls out its share of the step's prompts, `params.n` trajectories each (an environment
instance per trajectory: `reset(**fields of the example)`, as TRL calls it, its text appended to the
last user message). All of them advance together, turn by turn, on one KV cache
(atlas.sampler.Conversation):
1. every open trajectory samples a turn, until the template's end of turn (which closes a tool call too)
   or its remaining budget: `max_new_tokens` tokens summed over the trajectory's turns, and the model's
   positions;
2. the turn's calls are read in the template's format (atlas.train.tools: Hermes `<tool_call>` blocks,
   Llama 3.x JSON) and run in order, each with `timeout_s`; an error (unparseable, unknown tool, bad
   arguments, exception, timeout) reaches the model as the tool's result `{"error": ...}` and is counted
   by reason; a result (an error's too) longer than `max_output_tokens` tokens is cut and marked
   " [cut]" (counted as `output_cut`, not an error);
3. a turn without a call is the answer: the trajectory is done. Otherwise the results are appended as the
   template renders tool turns after the assistant's end of turn (`tool_turn_ids`: the tokens the template
   puts between the end of the turn and the next turn's generation prompt, from a minimal conversation,
   as TRL does), and the trajectory goes on from the same cache, prefilling only those tokens. It ends
   truncated when `max_turns`, its token budget or the context runs out first: a turn cut by its budget
   runs no call; the calls of a last turn do run (an environment's reward sees their effect), but their
   results, in `messages`, were never shown to the model.
The recorded sequence is exactly what the model saw: the prompt, each turn's tokens as sampled, each tool
turn's tokens as appended; never a re-rendering (a template may render past turns differently, or
tokenize across a boundary otherwise). `mask` marks the sampled tokens (the loss's); the sampler's
log-probabilities are kept for them. Random streams: trajectory j of prompt i draws turn k from
(stream_seed(*seed, i), j, k), so the world size never changes a trajectory.

The reward functions see the final assistant message as the completion and the whole trajectory as the
column `trajectories` (its chat messages, tool calls and results included); with an environment, also
`environments` (the instances, as TRL passes them), from which a trainer scores `get_reward()`
(`Toolbox.reward`).

Where atlas departs from TRL: a turn's calls run in order in one trajectory (TRL may gather async tools);
environment instances are pooled per Toolbox and reset per trajectory (TRL pools them too); timeouts
exist (TRL has none); tool errors are the JSON `{"error": ...}` TRL writes.

Left out: several environments in one run (TRL's dict of factories), async tools, tools returning images.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from atlas.sampler import Sampler, SamplingParams, stream_seed
from atlas.train.data import prompt_messages, reward_inputs
from atlas.train.rollout import Rollout, RolloutBatch, my_prompts
from atlas.train.tools import ERRORS, environment_tools, function_schema, parse_tool_calls, run_tool

__all__ = ["Toolbox", "agent_rollouts", "tool_metrics", "tool_sums", "tool_turn_ids"]


class Toolbox:
    """The tools trajectories may call: plain functions and/or one environment instance per trajectory
    (`environment_factory`, TRL's convention), their schemas for the template, its call format, and the
    loop's limits: `max_turns` assistant turns, `timeout_s` per call, `max_output_tokens` per result."""

    def __init__(self, tokenizer, tools: Sequence[Callable] = (), environment_factory: Callable | None = None, *,
                 max_turns: int = 8, timeout_s: float = 30.0, max_output_tokens: int = 512):
        if not tools and environment_factory is None:
            raise ValueError("a Toolbox needs tools, an environment_factory, or both")
        if not all(callable(fn) for fn in tools):
            raise ValueError(f"tools must be functions, got {[type(fn).__name__ for fn in tools if not callable(fn)]}")
        if max_turns < 1 or timeout_s <= 0 or max_output_tokens < 1:
            raise ValueError(f"max_turns ({max_turns}) and max_output_tokens ({max_output_tokens}) must be >= 1 and "
                             f"timeout_s ({timeout_s}) > 0")
        self.max_turns, self.timeout_s, self.max_output_tokens = max_turns, timeout_s, max_output_tokens
        self.functions = {fn.__name__: fn for fn in tools}
        self.factory = environment_factory
        self.pool: list[Any] = []  # environments: constructed once, reset per trajectory
        env_tools = {}
        if environment_factory is not None:
            self.pool.append(environment_factory())
            env_tools = environment_tools(self.pool[0])
        clash = set(self.functions) & set(env_tools)
        if clash:
            raise ValueError(f"tools and the environment both define {sorted(clash)}: give each tool one name")
        self.schemas = [function_schema(fn) for fn in [*tools, *env_tools.values()]]
        self.reward_name = type(self.pool[0]).__name__ if self.pool and hasattr(self.pool[0], "get_reward") \
            else None
        self.format = tokenizer.tool_call_format
        if self.format is None:
            raise ValueError("the chat template writes no tool call atlas can read back (Hermes <tool_call> blocks "
                             "or Llama 3.x JSON calls): choose a template with tool calling (chat_template=...)")
        tool_turn_ids(tokenizer, [{"role": "tool", "name": "probe", "content": "x"}], self.schemas)  # checks it

    def environments(self, count: int) -> list[Any]:
        """`count` environment instances from the pool (grown as needed); [] without a factory."""
        if self.factory is None:
            return []
        while len(self.pool) < count:
            self.pool.append(self.factory())
        return self.pool[:count]

    def reward(self, prompts: list[Any], completions: list[str], *, environments: list[Any],
               **columns: Any) -> list[float]:
        """The environments' own rewards, `get_reward()` of each finished trajectory's instance, as a reward
        function (TRL's: weight 1, named after the environment's class)."""
        return [float(e.get_reward()) for e in environments]

    def tools_of(self, environment: Any | None) -> dict[str, Callable]:
        return {**self.functions, **(environment_tools(environment) if environment is not None else {})}


def tool_turn_ids(tokenizer, tool_messages: list[dict[str, Any]], schemas: list[dict[str, Any]]) -> list[int]:
    """The tokens a template writes after an assistant turn's end (its end-of-turn token) for these tool
    results, through the next assistant turn's generation prompt; ValueError for a template whose tool
    turns do not extend the conversation before them."""
    call = [{"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}]
    dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": call}]
    before = tokenizer.apply_chat_template(dummy, add_generation_prompt=False, tokenize=True, tools=schemas)
    after = tokenizer.apply_chat_template(dummy + tool_messages, add_generation_prompt=True, tokenize=True,
                                          tools=schemas)
    ends = [t for t, i in enumerate(before) if i in set(tokenizer.stop_token_ids)]
    before = before[:ends[-1] + 1] if ends else before
    if after[:len(before)] != before:
        raise ValueError("the chat template renders an assistant turn differently once a tool result follows it "
                         "(Qwen3's drops the empty <think> block of a past turn): a tool turn cannot be appended to "
                         "what was sampled. Pass a prefix-preserving variant as chat_template= (TRL publishes them as "
                         "<model>_training.jinja)")
    return after[len(before):]


def agent_rollouts(model, tokenizer, examples: Sequence[Any], params: SamplingParams, seed: tuple[int, ...],
                   toolbox: Toolbox, sampler: Sampler | None = None, mine: list[int] | None = None) -> RolloutBatch:
    """This rank's trajectories of the global batch `examples` (params.n per prompt): of the prompts at
    `mine` (default: this rank's share); see the module docstring."""
    mine = my_prompts(len(examples)) if mine is None else mine
    n = params.n
    sampler = sampler or Sampler(model, tokenizer)
    envs = toolbox.environments(len(mine) * n)
    prompts, columns = reward_inputs([examples[i] for i in mine])
    trajectories = []
    for k, i in enumerate(mine):
        for j in range(n):
            env = envs[k * n + j] if envs else None
            messages = [dict(m) for m in prompt_messages(examples[i])]
            if env is not None:  # as TRL: the example's fields (a dict's, prompt included) as keywords
                example = examples[i]
                shown = env.reset(**(dict(example) if isinstance(example, dict) else
                                     {"prompt": prompt_messages(example), **{c: v[k] for c, v in columns.items()}}))
                if shown is not None:
                    messages[-1]["content"] += shown
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                tools=toolbox.schemas)
            trajectories.append(_Trajectory(i, j, ids, messages, env, toolbox.tools_of(env)))
    limit = model.config.max_position_embeddings
    open_ = list(trajectories)
    with sampler.conversation([t.prompt_ids for t in open_], params,
                              [(stream_seed(*seed, t.prompt_index), t.sample) for t in open_]) as conv:
        for turn in range(toolbox.max_turns):
            budgets = [min(params.max_new_tokens - t.sampled, limit - len(t.prompt_ids) - len(t.ids)) for t in open_]
            continuing = {}
            for b, (t, done) in enumerate(zip(open_, conv.turn(budgets))):
                appended = t.take_turn(done, tokenizer, toolbox)
                if appended is None:
                    continue
                if (turn + 1 == toolbox.max_turns or t.sampled >= params.max_new_tokens
                        or len(t.prompt_ids) + len(t.ids) + len(appended) + 1 > limit):
                    t.truncated = True  # a call made, and no turn, token or position left to answer in
                    continue
                t.append(appended)
                continuing[b] = appended
            if not continuing:
                break
            conv.extend(continuing)
            open_ = [open_[b] for b in sorted(continuing)]
    rollouts = [t.rollout() for t in trajectories]
    keep = {key: [values[k] for k in range(len(mine)) for _ in range(n)] for key, values in columns.items()}
    keep["trajectories"] = [r.messages for r in rollouts]
    if envs:
        keep["environments"] = envs
    return RolloutBatch(rollouts, [prompts[k] for k in range(len(mine)) for _ in range(n)], keep)


def tool_sums(rollouts: Sequence[Rollout]) -> dict[str, float]:
    """What a rank's trajectories did, as sums (the same keys on every rank, for `ad.all_reduce_sums`)."""
    errors = Counter()
    for r in rollouts:
        errors.update(r.tool_errors)
    return {"turns": sum(r.turns for r in rollouts), "tool_calls": sum(r.tool_calls for r in rollouts),
            "appended": sum(len(r.completion_ids) - r.sampled for r in rollouts), "output_cut": errors["output_cut"],
            **{f"error_{reason}": errors[reason] for reason in ERRORS}}


def tool_metrics(sums: dict[str, float], n: int) -> dict[str, float]:
    """Per-trajectory means over `n` trajectories and error fractions per call, from summed `tool_sums`."""
    calls = max(sums["tool_calls"], 1)
    errors = {reason: sums[f"error_{reason}"] for reason in ERRORS}
    return {"turns_mean": sums["turns"] / n, "tool_calls_mean": sums["tool_calls"] / n,
            "appended_len_mean": sums["appended"] / n, "tool_error_frac": sum(errors.values()) / calls,
            **{f"tool_error_frac_{reason}": count / calls for reason, count in errors.items()},
            "tool_output_cut_frac": sums["output_cut"] / calls}


class _Trajectory:
    """One trajectory being rolled out: what was sampled and appended, its messages and counts."""

    def __init__(self, prompt_index: int, sample: int, prompt_ids: list[int], messages: list[dict[str, Any]],
                 env: Any, tools: dict[str, Callable]):
        self.prompt_index, self.sample, self.prompt_ids, self.messages = prompt_index, sample, prompt_ids, messages
        self.env, self.tools = env, tools
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.logprobs: list[float] = []
        self.sampled_logprobs: list[float] = []
        self.turns, self.calls, self.truncated, self.text = 0, 0, False, ""
        self.errors: Counter[str] = Counter()

    @property
    def sampled(self) -> int:
        return sum(self.mask)

    def take_turn(self, done, tokenizer, toolbox: Toolbox) -> list[int] | None:
        """Record a sampled turn; run its calls. Returns the tool turn's tokens to append, or None when the
        trajectory is over (an answer, or a turn cut by its budget)."""
        self.turns += 1
        self.ids += done.token_ids
        self.mask += [1] * len(done.token_ids)
        self.logprobs += done.logprobs
        self.sampled_logprobs += done.sampled_logprobs
        body = done.token_ids[:-1] if done.finish_reason == "stop" else done.token_ids  # without the end of turn
        raw = tokenizer.decode(body, skip_special_tokens=False)
        self.text = tokenizer.decode(done.token_ids, skip_special_tokens=True)
        if done.finish_reason == "length":
            self.truncated = True
            self.messages.append({"role": "assistant", "content": self.text})
            return None
        calls = parse_tool_calls(raw, toolbox.format)
        if not calls:
            self.messages.append({"role": "assistant", "content": self.text})
            return None
        turn_id = f"call_{self.turns}"
        read = [c for c in calls if "unparseable" not in c]
        if len(read) < len(calls):  # a call could not be read: the turn as written is what the rewards see
            content = self.text
        else:  # the prose before the calls (a JSON-format turn is only its call)
            content = self.text.split("<tool_call>")[0].strip() if toolbox.format == "hermes" else ""
        self.messages.append({"role": "assistant", "content": content, **({"tool_calls": [
            {"id": f"{turn_id}_{c}", "type": "function", "function": call} for c, call in enumerate(calls)
            if "unparseable" not in call]} if read else {})})
        results = []
        for c, call in enumerate(calls):
            self.calls += 1
            if "unparseable" in call:
                content, error = json.dumps({"error": f"the tool call could not be read: {call['unparseable']}"}), \
                    "unparseable"
            else:
                content, error = run_tool(self.tools, call, toolbox.timeout_s)
            if error is not None:
                self.errors[error] += 1
            ids = tokenizer.encode(content, add_special_tokens=False)
            if len(ids) > toolbox.max_output_tokens:
                self.errors["output_cut"] += 1
                content = tokenizer.decode(ids[:toolbox.max_output_tokens]) + " [cut]"
            results.append({"role": "tool", "tool_call_id": f"{turn_id}_{c}",
                            "name": call.get("name", "invalid_tool_call"), "content": content})
        self.messages += results
        return tool_turn_ids(tokenizer, results, toolbox.schemas)

    def append(self, tokens: list[int]) -> None:
        self.ids += tokens
        self.mask += [0] * len(tokens)
        self.logprobs += [0.0] * len(tokens)
        self.sampled_logprobs += [0.0] * len(tokens)

    def rollout(self) -> Rollout:
        return Rollout(self.prompt_index, self.sample, self.prompt_ids, self.ids, self.logprobs,
                       self.sampled_logprobs, self.truncated, self.text, mask=self.mask, messages=self.messages,
                       turns=self.turns, tool_calls=self.calls, tool_errors=dict(self.errors))
