"""GRPO through tools with the taught tiny agent (tests/agent.py): a step counts every kind of tool error and
trains the sampled tokens only, at ratio 1 with no sampler/trainer gap; a TRL-style environment's
get_reward is a reward; the held-out evaluation runs the tool loop; resume mid mu-cycle continues the same
rows; 2 processes roll out and learn as 1; a short run learns to choose the tool that works."""

import json
import os
import shutil
import signal

import pytest

import atlas.model as am
from atlas.reward import answer_match
from atlas.rl import GRPO, GRPOConfig
from atlas.train.metrics import read_metrics
from atlas.train.tools import ERRORS
from tests import agent
from tests.multiproc import run_ranks
from tests.signals import sigterm_after

TRAIN, HELD_OUT = agent.problems(256), agent.problems(8, seed=9)
TOOL_KEYS = ("turns_mean", "tool_calls_mean", "tool_error_frac", *(f"tool_error_frac_{r}" for r in ERRORS),
             "appended_len_mean", "truncated_frac", "tokens", "trained_tokens", "completion_len_mean")
EXACT = ("step", "reward_mean", "reward_std", "lr", *TOOL_KEYS)
CLOSE = ("loss", "kl", "entropy", "grad_norm")


def _grpo(directory, output_dir, reward=agent.tool_worked, tools=agent.TOOLS, environment_factory=None, **overrides):
    config = GRPOConfig(**{"output_dir": str(output_dir), "max_steps": 1, "lr": 3e-4, "prompts_per_step": 8,
                           "num_generations": 4, "max_new_tokens": 128, "micro_batch_size": 32, "beta": 0.0,
                           "seed": 1, "tool_timeout_s": 0.2, "max_turns": 3, **overrides})
    return GRPO(am.from_pretrained(directory), am.Tokenizer.from_pretrained(directory), reward, config,
                tools=tools, environment_factory=environment_factory)


def test_a_step_counts_every_tool_error_and_trains_the_sampled_tokens_at_ratio_one(taught_agent, tmp_path):
    seen = {}

    def reward(prompts, completions, trajectories, answers, **_):
        seen.update(completions=completions, trajectories=trajectories, answers=answers)
        return agent.tool_worked(prompts, completions, trajectories)

    trainer = _grpo(taught_agent, tmp_path, reward, prompts_per_step=16)
    row = trainer.step(TRAIN[:16])
    assert row["clip_frac"] == 0.0  # ratio 1
    # the sampler's log-probs are the trainer's to fp32 rounding: one-turn rollouts of the same length measure
    # a max of 4e-5 (mean 8e-7), these 1.3e-5 (1.4e-7); a misplaced token or mask would cost > 0.1
    assert row["logprob_gap_max"] <= 5e-5 and row["logprob_gap_mean"] <= 1e-6
    for reason in ERRORS:
        assert row[f"tool_error_frac_{reason}"] > 0, reason
    assert row["tool_error_frac"] == pytest.approx(sum(row[f"tool_error_frac_{r}"] for r in ERRORS))
    assert 1.5 < row["turns_mean"] <= 2 and row["tool_calls_mean"] == pytest.approx(1, abs=0.1)
    assert row["trained_tokens"] == row["tokens"] == row["completion_len_mean"] * 64  # the sampled, all of them
    assert row["appended_len_mean"] > 0  # tool turns were in the sequences, as context
    # rewards: the final assistant message as the completion, the trajectory beside it
    finals = [t[-1]["content"] for t in seen["trajectories"]]
    assert seen["completions"] == finals and all(t[-1]["role"] == "assistant" for t in seen["trajectories"])
    assert seen["answers"] == [e.reference for e in TRAIN[:16] for _ in range(4)]


def test_an_environment_reward_is_logged_and_may_be_the_only_reward(taught_agent, tmp_path):
    trainer = _grpo(taught_agent, tmp_path / "env", [], tools=None, environment_factory=agent.Calculator)
    assert trainer.reward_names == ["Calculator"] and trainer.reward_weights == [1.0]
    row = trainer.step(TRAIN[:8])
    assert row["reward_Calculator"] == row["env_reward_mean"] == row["reward_mean"] > 0
    with_rule = _grpo(taught_agent, tmp_path / "both", [answer_match], tools=None,
                      environment_factory=agent.Calculator, reward_weights=[0.5])
    assert with_rule.reward_names == ["answer_match", "Calculator"] and with_rule.reward_weights == [0.5, 1.0]
    with pytest.raises(ValueError, match="get_reward is not among them"):
        _grpo(taught_agent, tmp_path / "bad", [answer_match], tools=None, environment_factory=agent.Calculator,
              reward_weights=[0.5, 1.0])
    with pytest.raises(ValueError, match="empty only with an environment"):
        _grpo(taught_agent, tmp_path / "none", [])


def test_the_evaluation_runs_the_tool_loop(taught_agent, tmp_path):
    trainer = _grpo(taught_agent, tmp_path)
    result = trainer.evaluate(HELD_OUT)
    # greedy: the taught agent's likeliest call is multiply, which works; then it answers
    assert {k: result[k] for k in ("success_rate", "reward_mean", "n", "turns_mean", "tool_calls_mean",
                                   "tool_error_frac")} == {"success_rate": 1.0, "reward_mean": 1.0, "n": 8,
                                                           "turns_mean": 2.0, "tool_calls_mean": 1.0,
                                                           "tool_error_frac": 0.0}
    assert result["appended_len_mean"] > 0 and all(result[f"tool_error_frac_{r}"] == 0 for r in ERRORS)
    assert result["mean_tokens"] > 50  # both turns' tokens (a call alone is ~50)


def test_resume_mid_cycle_continues_the_same_trajectories(taught_agent, tmp_path):
    settings = dict(max_steps=4, mu=2, save_every=100, beta=0.04)
    straight = _grpo(taught_agent, tmp_path / "straight", **settings)
    straight.train(TRAIN)
    expected = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    cut = _grpo(taught_agent, tmp_path / "cut", **settings)
    sigterm_after(cut, 3)
    assert cut.train(TRAIN)["interrupted"]
    assert cut.rollout_batch.inner == 1 and any(r.turns > 1 for r in cut.rollout_batch.rollouts)
    # each rank keeps its own rollouts: a state whose ranks differ cannot resume on another world size
    (state,) = (tmp_path / "cut" / "checkpoints").iterdir()
    other = tmp_path / "other" / "checkpoints" / state.name
    shutil.copytree(state, other)
    trainer_json = json.loads((other / "trainer.json").read_text())
    (other / "trainer.json").write_text(json.dumps({**trainer_json, "world_size": 2}))
    (other / "extra.1.json").write_text("{}")
    with pytest.raises(ValueError, match="resume it on 2 ranks, not 1"):
        _grpo(taught_agent, tmp_path / "other", resume=True, **settings).train(TRAIN)
    resumed = _grpo(taught_agent, tmp_path / "cut", resume=True, **settings)
    assert resumed.train(TRAIN)["step"] == 4
    got = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    keys = (*EXACT, *CLOSE)
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in expected]


def _two(rank, directory, root):
    """2 processes: run to step 1 (mid mu-cycle), stop on SIGTERM, resume to step 2 from each rank's own
    rollouts."""
    settings = dict(max_steps=2, mu=2, beta=0.04, prompts_per_step=4)
    trainer = _grpo(directory, root / "two", **settings)
    real_step = trainer.step
    trainer.step = lambda batch: (real_step(batch), os.kill(os.getpid(), signal.SIGTERM))[0]
    out = trainer.train(TRAIN)
    resumed = _grpo(directory, root / "two", resume=True, **settings)
    return {"interrupted_at": out["step"], "end": resumed.train(TRAIN)["step"]}


@pytest.mark.slow
def test_two_processes_roll_out_and_learn_as_one_through_a_resume(taught_agent, tmp_path):
    _grpo(taught_agent, tmp_path / "one", max_steps=2, mu=2, beta=0.04, prompts_per_step=4).train(TRAIN)
    reports = run_ranks(_two, taught_agent, tmp_path, tmp_path=tmp_path)
    assert all(r == {"interrupted_at": 1, "end": 2} for r in reports)
    one, two = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}  # the same trajectories and rewards
        for k in CLOSE:
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (k, a[k], b[k])
    assert one[0]["turns_mean"] > 1.5 and one[1]["kl"] > 0  # multi-turn, and the second step had moved


def test_a_short_run_learns_to_choose_the_tool_that_works(taught_agent, tmp_path):
    trainer = _grpo(taught_agent, tmp_path, max_steps=14, eval_every=14)
    trainer.train(TRAIN, HELD_OUT)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    train = [r for r in rows if "reward_mean" in r]
    evals = [r for r in rows if "eval_success_rate" in r]
    first, last = (sum(r["reward_mean"] for r in part) / 3 for part in (train[:3], train[-3:]))
    assert first < 0.45 and last > first + 0.2, (first, last)
    assert [r["step"] for r in evals] == [0, 14] and all(r["eval_turns_mean"] == 2.0 for r in evals)
