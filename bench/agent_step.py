"""An agent's GRPO step through tools against a one-turn step of the same sampled-token count (CPU).

    python bench/agent_step.py                     # s/step of each, the agent step's phases, prefill costs
    python bench/agent_step.py --rounds 5 --steps 3

The model: the taught tiny agent of tests/agent.py (the embedded student, 3 layers, hidden 96, after 160
SFT steps on Hermes tool-call demonstrations; built once into --dir), which answers "Compute a * b." with
one tool call, then an answer: two turns. Its tools are the tests' with subtract's sleep set to 0, so
every failed call (raised, bad arguments, unknown tool, unparseable) costs an error message, not a
timeout.

Agent step: GRPO(tools=...) with 8 prompts x 8 trajectories, max_new_tokens 128 summed over the turns,
max_turns 3, temperature 1, beta 0.04 (a reference pass), mu 1, one micro-batch of 64. One-turn step: the
same trainer without tools on the same prompts (the tool schemas rendered in them too), `ignore_eos` and
max_new_tokens = the agent step's mean sampled tokens per trajectory (rounded), so both sample the same
number of tokens; its sequences are shorter by the tool turns. The methods alternate in rounds of
`--steps` + 1 steps, the first of each round dropped; figures are medians.

Phases of the agent step: `turns` (the sampled turns: atlas.sampler.Conversation.turn, summed),
`prefill` (the tool turns prefilled into the cache: Conversation.extend, plus the conversation's opening
prefill), `tools` (run_tool, summed), the rest of the rollout (parsing, rendering tool turns, building the
batch), then GRPO's own `reward_s`, `logprob_s`, `update_s`.

The update and the log-prob passes run over the micro-batch's packed row (each prompt once, then its
trajectories after it: atlas.train.rollout): its tokens are printed beside the table, with what padding
every sequence to the longest would have been.

Prefill with and without the cache: for the trajectories of one agent step that called a tool, the cost
of continuing after the tool result by prefilling only the tool turn into the kept cache (what atlas does:
one `extend`) against prefilling the whole context again (prompt + first turn + tool turn, from an empty
cache: what a stateless engine that re-renders the conversation per turn does), each timed as one batched
forward over the same rows, median of 20.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from sft_step import machine

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # see bench/sampler.py: bench/kernels.py must not shadow the `kernels` package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the taught agent lives in tests/agent.py

import atlas.model as am  # noqa: E402
import atlas.sampler as sampler_module  # noqa: E402
import atlas.train.agent as agent_module  # noqa: E402
from atlas.model import KVCache  # noqa: E402
from atlas.rl import GRPO, GRPOConfig  # noqa: E402
from tests import agent  # noqa: E402

P, G = 8, 8


class Phases:
    """Seconds spent in the wrapped functions since the last `take()`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, owner, name: str, phase: str) -> None:
        real = getattr(owner, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def trainer(directory: Path, out: Path, tools, max_new_tokens: int, ignore_eos: bool) -> GRPO:
    config = GRPOConfig(output_dir=str(out), max_steps=10_000, lr=1e-6, prompts_per_step=P, num_generations=G,
                        max_new_tokens=max_new_tokens, micro_batch_size=P * G, beta=0.04, seed=0, max_turns=3,
                        ignore_eos=ignore_eos, temperature=1.0)
    return GRPO(am.from_pretrained(directory), am.Tokenizer.from_pretrained(directory), agent.tool_worked
                if tools else (lambda prompts, completions, **_: [float(len(c) % 7) for c in completions]), config,
                tools=tools)


def prefill_costs(model, rollouts, repeats: int = 20) -> dict[str, float]:
    """Continuing after a tool result: prefill the tool turn into the kept cache vs the whole context."""
    called = [r for r in rollouts if r.turns > 1]
    first_turn = [r.mask.index(0) for r in called]  # the first appended token
    tool_len = [r.mask.index(1, s) - s for r, s in zip(called, first_turn)]
    contexts = [r.sequence[:len(r.prompt_ids) + s] for r, s in zip(called, first_turn)]  # through turn 1
    tools = [r.completion_ids[s:s + n] for r, s, n in zip(called, first_turn, tool_len)]

    def padded(rows):
        T = max(len(x) for x in rows)
        ids = torch.zeros(len(rows), T, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, x in enumerate(rows):
            ids[b, T - len(x):], mask[b, T - len(x):] = torch.tensor(x), 1
        return ids, mask

    def reuse():  # the cache already holds each row's context: forward only the tool turn
        ids_BT, mask_BT = padded(contexts)
        cache = KVCache(model.config, len(contexts), ids_BT.shape[1] + max(tool_len), dtype=model.dtype,
                        device=model.device)
        model.forward(ids_BT, attention_mask_BT=mask_BT, cache=cache, return_hidden=True)
        block = torch.zeros(len(contexts), max(tool_len), dtype=torch.long)
        valid = torch.zeros_like(block)
        for b, x in enumerate(tools):
            block[b, :len(x)], valid[b, :len(x)] = torch.tensor(x), 1
        t0 = time.perf_counter()
        model.forward(block, attention_mask_BT=valid, cache=cache, return_hidden=True)
        return time.perf_counter() - t0

    def recompute():  # a fresh cache: the whole context and the tool turn again
        ids_BT, mask_BT = padded([c + t for c, t in zip(contexts, tools)])
        t0 = time.perf_counter()
        cache = KVCache(model.config, ids_BT.shape[0], ids_BT.shape[1], dtype=model.dtype, device=model.device)
        model.forward(ids_BT, attention_mask_BT=mask_BT, cache=cache, return_hidden=True)
        return time.perf_counter() - t0

    with torch.no_grad():
        timings = {name: statistics.median(fn() for _ in range(repeats)) for name, fn in
                   (("reuse_s", reuse), ("recompute_s", recompute))}
    return {**timings, "rows": len(called), "tool_turn_tokens_mean": statistics.mean(tool_len),
            "context_tokens_mean": statistics.mean(len(c) + len(t) for c, t in zip(contexts, tools))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="results/bench_agent", help="where the taught agent is built and runs go")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)
    root = Path(args.dir)
    directory = agent.taught(root / "taught")
    phases = Phases()
    phases.wrap(sampler_module.Conversation, "turn", "turns")
    phases.wrap(sampler_module.Conversation, "extend", "prefill")
    phases.wrap(sampler_module.Conversation, "__enter__", "prefill")
    phases.wrap(agent_module, "run_tool", "tools")
    # the tools in every prompt, the one-turn step's too: both sequences open with the same ~90 tokens
    examples = [dataclasses.replace(e, tools=agent.SCHEMAS) for e in agent.problems(4096)]

    agent.SLEEP_S = 0.0  # subtract answers at once: a step times the loop, not a sleeping tool
    tool_trainer = trainer(directory, root / "agent", agent.TOOLS, 128, ignore_eos=False)
    first = tool_trainer.step(examples[:P])  # warm-up; fixes the one-turn length
    sampled = round(first["completion_len_mean"])
    plain = trainer(directory, root / "one_turn", None, sampled, ignore_eos=True)
    plain.step(examples[:P])
    phases.take()
    rows = {"agent": [], "one_turn": []}
    cursor = P
    for _ in range(args.rounds):
        for name, t in (("agent", tool_trainer), ("one_turn", plain)):
            last = None
            for s in range(args.steps + 1):
                batch = examples[cursor:cursor + P]
                row = t.step(batch)
                now = time.perf_counter()
                spent = phases.take()
                if s and last is not None:
                    rows[name].append({**row, **spent, "step_s": now - last})
                last = now
            cursor += P * (args.steps + 1)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], int | float)}
           for name, rs in rows.items()}
    agent_row = med["agent"]
    rollout_rest = agent_row["rollout_s"] - sum(agent_row.get(k, 0.0) for k in ("turns", "prefill", "tools"))
    # one agent step's rollouts, for the prefill comparison
    captured = {}
    real = agent_module.agent_rollouts

    def keep(*a, **k):
        captured["batch"] = real(*a, **k)
        return captured["batch"]

    import atlas.rl.grpo as grpo_module

    grpo_module.agent_rollouts = keep
    tool_trainer.step(examples[cursor:cursor + P])
    grpo_module.agent_rollouts = real
    prefill = prefill_costs(tool_trainer.model, captured["batch"].rollouts)
    rollouts = captured["batch"].rollouts
    lengths = [len(r.sequence) for r in rollouts]
    packed = sum(len(p) for p in {tuple(r.prompt_ids) for r in rollouts}) + sum(len(r.completion_ids) for r in rollouts)
    one_turn_len = len(captured["batch"].rollouts[0].prompt_ids) + sampled  # the same prompts, ignore_eos

    out = {"machine": machine(), "shape": f"{P} prompts x {G}", "agent": agent_row, "one_turn": med["one_turn"],
           "rollout_other_s": rollout_rest, "prefill": prefill,
           "sequence_tokens": {"agent_mean": statistics.mean(lengths), "agent_max": max(lengths), "packed": packed,
                               "one_turn": one_turn_len}}
    print(f"# {out['machine']}; {P} prompts x {G} trajectories; medians of {len(rows['agent'])} steps each")
    print("| step | s/step | sampled tokens/traj | turns | rollout s | reward s | logprob s | update s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("agent", "one_turn"):
        m = med[name]
        print(f"| {name} | {m['step_s']:.3f} | {m['completion_len_mean']:.1f} | {m.get('turns_mean', 1):.2f} | "
              f"{m['rollout_s']:.3f} | {m['reward_s']:.4f} | {m['logprob_s']:.3f} | {m['update_s']:.3f} |")
    print(f"\nagent rollout: turns {agent_row.get('turns', 0):.3f} s, prefill {agent_row.get('prefill', 0):.3f} s, "
          f"tools {agent_row.get('tools', 0):.4f} s, the rest {rollout_rest:.3f} s; tool calls/traj "
          f"{agent_row['tool_calls_mean']:.2f}, tool tokens/traj {agent_row['appended_len_mean']:.1f}, "
          f"errors {agent_row['tool_error_frac']:.1%} of calls")
    print(f"sequences: agent mean {statistics.mean(lengths):.0f} tokens, max {max(lengths)}; the packed row "
          f"{packed:,} tokens (padded: {len(lengths)} x {max(lengths)} = {len(lengths) * max(lengths):,}, "
          f"unshared: {sum(lengths):,}); one-turn {one_turn_len}")
    print(f"continuing {prefill['rows']} rows after a tool result ({prefill['tool_turn_tokens_mean']:.1f} tool-turn "
          f"tokens, {prefill['context_tokens_mean']:.1f} context tokens each): prefill into the kept cache "
          f"{prefill['reuse_s'] * 1e3:.2f} ms, recompute the context {prefill['recompute_s'] * 1e3:.2f} ms "
          f"({prefill['recompute_s'] / prefill['reuse_s']:.1f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
