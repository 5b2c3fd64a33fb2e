"""The teaching recipe: what each stage receives (a scripted student endpoint on 127.0.0.1 and scripted
judges), the loss on exactly the sampled prompt, the asymmetric rule's four cases, the leak penalty, and a
short embedded run where the teaching starts to help."""

import re

import pytest
import torch

import atlas.model as am
import atlas.rl.grpo as grpo_module
from atlas.embedded import model_path, task
from atlas.reward import RIM, HTTPChatClient, RIMConfig, leaks_answer, numbers_in
from atlas.rl import TeacherConfig, Teaching
from atlas.rl.teacher import asymmetric_reward, teaching_of
from atlas.train.metrics import read_metrics
from tests.reward.server import Reply, ScriptedServer, evaluation

QUESTIONS = task.examples("train")[:4]
DIAGNOSTIC = "I line up the digits."


def _answer_of(question: str) -> int:
    a, b = map(int, re.findall(r"\d+", question)[:2])
    return a + b


def student_script(body, n):
    """Alone the student is wrong; with any teaching that names the ones digits it is right."""
    text = body["messages"][-1]["content"]
    if "Describe your approach" in text:
        return Reply(DIAGNOSTIC)
    if "Teaching:" in text:
        question, teaching = text.split("\nTeaching: ", 1)
        right = re.search(r"\d \+ \d = \d+", teaching) is not None
        return Reply(f"The answer is {_answer_of(question) if right else 0}.")
    return Reply("The answer is 0.")


def _teaching(tmp_path, client, **overrides):
    path = model_path("teaching-teacher")
    config = TeacherConfig(**{"output_dir": str(tmp_path / "run"), "max_steps": 1, "lr": 1e-4, "prompts_per_step": 4,
                              "num_generations": 4, "max_new_tokens": 40, "student_max_new_tokens": 12,
                              "micro_batch_size": 16, "beta": 0.0, **overrides})
    return Teaching(am.from_pretrained(path), am.Tokenizer.from_pretrained(path), client, config)


def test_each_stage_receives_what_it_should_and_the_loss_uses_the_sampled_prompt(tmp_path, monkeypatch):
    seen = []
    real_rollouts = grpo_module.sample_rollouts
    monkeypatch.setattr(grpo_module, "sample_rollouts", lambda *a: seen.append(real_rollouts(*a)) or seen[-1])
    with ScriptedServer(student_script) as server:
        trainer = _teaching(tmp_path, HTTPChatClient(server.base_url))
        forwards = []
        real_forward = trainer.model.forward
        trainer.model.forward = lambda ids, **kw: forwards.append((ids.tolist(), kw)) or real_forward(ids, **kw)
        row = trainer.step(QUESTIONS)
        requests = [b["messages"][-1]["content"] for b in server.requests]
    rollouts = seen[0].rollouts
    tok = trainer.tokenizer
    for r in rollouts:
        prompt = tok.decode(r.prompt_ids)
        question = QUESTIONS[r.prompt_index].prompt[0]["content"]
        assert question in prompt and DIAGNOSTIC in prompt  # the teacher sees the question and the diagnostic
    taught = [t for t in requests if "Teaching:" in t]
    assert len(taught) == 16
    teachings = sorted((teaching_of(r.text) or "") for r in rollouts)
    assert sorted(t.split("\nTeaching: ", 1)[1] for t in taught) == teachings
    assert not any("<thinking>" in t or "thinking" in t.split("\nTeaching: ", 1)[1] for t in taught)
    # the trainer's last forward (the loss's) ran on exactly the sampled prompts + completions: packed, each
    # prompt once and its completions after it (their parent)
    (packed,), kw = forwards[-1]
    bounds, parents = kw["cu_seqlens"].tolist(), kw["parents"].tolist()
    pieces = [packed[a:b] for a, b in zip(bounds, bounds[1:])]
    sequences = sorted(pieces[p] + piece for piece, p in zip(pieces, parents) if p >= 0)
    assert sequences == sorted(r.sequence for r in rollouts) and len(sequences) == 16
    assert row["baseline_accuracy"] == 0.0 and 0 <= row["taught_accuracy"] <= 1


def test_the_judges_see_the_post_teaching_answer(tmp_path):
    judged = []

    def judges(body, n):
        judged.append(body["messages"][-1]["content"])
        return Reply(evaluation(0.8))

    with ScriptedServer(student_script) as student, ScriptedServer(judges) as judge_server:
        rim = RIM(RIMConfig(base_url=judge_server.base_url, small_model="s", large_model="l",
                            active_judges=("helpfulness", "process")))
        path = model_path("teaching-teacher")
        config = TeacherConfig(output_dir=str(tmp_path / "run"), max_steps=1, prompts_per_step=2, num_generations=2,
                               max_new_tokens=40, student_max_new_tokens=12, beta=0.0, reward_mode="rim")
        trainer = Teaching(am.from_pretrained(path), am.Tokenizer.from_pretrained(path),
                           HTTPChatClient(student.base_url), config, judge=rim)
        trainer.step(QUESTIONS[:2])
        answers = [student_script({"messages": [{"content": b["messages"][-1]["content"]}]}, 0).content
                   for b in student.requests if "Teaching:" in b["messages"][-1]["content"]]
    assert judged
    for answer in set(answers):
        assert any(answer in j for j in judged)  # the response judged is the student's answer after teaching
    assert all(QUESTIONS[0].prompt[0]["content"] in j or QUESTIONS[1].prompt[0]["content"] in j for j in judged)


@pytest.mark.parametrize("baseline, taught, expected", [(False, True, 1.5), (True, True, 0.5), (True, False, -1.0),
                                                         (False, False, 0.0)])
def test_the_asymmetric_rule(baseline, taught, expected):
    assert asymmetric_reward(baseline, taught, baseline_len=10, taught_len=5) == expected  # efficiency 0.5
    no_gain = expected - 0.5 if taught else expected  # a longer taught answer earns no efficiency
    assert asymmetric_reward(baseline, taught, baseline_len=10, taught_len=20) == no_gain


def test_leaks_are_found_on_normalised_answers_not_substrings():
    assert leaks_answer("the sum is eighty-five", "85") and leaks_answer("it is 85.", "The answer is 85.")
    assert not leaks_answer("7 + 8 = 15", "85") and not leaks_answer("185 apples", "85")
    assert leaks_answer("Think of Paris.", "Paris") and not leaks_answer("Think of France.", "Paris")
    assert numbers_in("one hundred and two, 3/4") == [0.75, 102.0]


def _scripted_judges(body, n):
    """Judges that score the student's post-teaching answer: 1 when right, 0 when it is the wrong "0"."""
    judged = re.search(r"## (?:Student's solution after the teaching|Response|Final answer)\n(.*)",
                       body["messages"][-1]["content"]).group(1)
    return Reply(evaluation(0.0 if judged == "The answer is 0." else 1.0))


CASES = [(b, t, leak) for b in (False, True) for t in (False, True) for leak in (False, True)]


@pytest.mark.parametrize("mode", ["rule", "rim"])
def test_no_leaking_teaching_scores_above_the_worst_honest_outcome(tmp_path, mode):
    """Every (baseline right, taught right, leaked) case, plus a completion with no <teaching> block: the
    leaks earn the minimum minus the penalty, the missing block the minimum, the honest ones their outcome."""
    q = QUESTIONS[0].prompt[0]["content"]
    answer = _answer_of(q)
    completions, baselines = [], []
    for baseline_right, taught_right, leaked in CASES:
        hint = "7 + 8 = 15" if taught_right else "add carefully"  # the scripted student is right with the first
        completions.append(f"<thinking>x</thinking><teaching>{hint}{f', so it is {answer}' if leaked else ''}"
                           "</teaching>")
        baselines.append(f"The answer is {answer if baseline_right else 0}.")
    completions.append("<thinking>no teaching block</thinking>")
    baselines.append("The answer is 0.")
    n = len(completions)
    with ScriptedServer(student_script) as student, ScriptedServer(_scripted_judges) as judges:
        rim = RIM(RIMConfig(base_url=judges.base_url, small_model="s", large_model="l",
                            active_judges=("helpfulness", "process")))
        path = model_path("teaching-teacher")
        config = TeacherConfig(output_dir=str(tmp_path / "run"), beta=0.0, reward_mode=mode)
        trainer = Teaching(am.from_pretrained(path), am.Tokenizer.from_pretrained(path),
                           HTTPChatClient(student.base_url), config, judge=rim)
        rewards, counts, _ = trainer.teaching_reward([q] * n, completions, question=[q] * n,
                                                     answers=[str(answer)] * n, baseline=baselines,
                                                     diagnostic=[DIAGNOSTIC] * n)
        judged = [b["messages"][-1]["content"] for b in judges.requests]
    honest = [r for r, (_, _, leaked) in zip(rewards, CASES) if not leaked]
    leaks = [r for r, (_, _, leaked) in zip(rewards, CASES) if leaked]
    floor = -1.0 if mode == "rule" else 0.0
    if mode == "rule":  # fixes a wrong answer: 1 + efficiency (equal lengths: 0); keeps: 0; breaks: -1
        assert honest == [0.0, 1.0, -1.0, 0.0]
    else:  # the judges' scores of the student's answer after the teaching
        assert honest == [pytest.approx(0.0, abs=1e-6), pytest.approx(1.0), pytest.approx(0.0, abs=1e-6),
                          pytest.approx(1.0)]
        assert judged and not any(f"so it is {answer}" in j for j in judged)  # leaks are not judged at all
    assert leaks == [floor - 1.0] * 4 and max(leaks) < min(honest) and min(honest) >= floor
    assert rewards[-1] == floor  # no <teaching> block: the minimum, no more than an honest failure
    assert (counts["leaked"], counts["missing"], counts["n"]) == (4, 1, 9)


def test_a_short_embedded_run_makes_the_teaching_help(tmp_path):
    from atlas.reward.local import LocalChatClient

    student_path = model_path("teaching-student")
    student = am.from_pretrained(student_path)
    client = LocalChatClient({"student": (student, am.Tokenizer.from_pretrained(student_path))})
    trainer = _teaching(tmp_path, client, max_steps=60, prompts_per_step=8, num_generations=8, micro_batch_size=64,
                        eval_every=60, student_max_new_tokens=12, diagnostic_max_new_tokens=24, beta=0.04)
    trainer.train(task.examples("train"), task.examples("eval")[:100])
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    evals = [r for r in rows if "eval_taught_accuracy" in r]
    assert evals[-1]["eval_taught_accuracy"] > evals[0]["eval_taught_accuracy"]
    assert (tmp_path / "run" / "best_teaching.json").exists()
    assert torch.isfinite(torch.tensor([r["loss"] for r in rows if "loss" in r])).all()
