"""The adaptive-teaching recipe: GRPO where the policy is the teacher and a frozen student answers.

Per question (each rank its share of the step's questions):
1. the student answers alone (the baseline) and, asked with `diagnostic_prompt`, describes its approach;
2. the teacher is prompted with `teacher_prompt` (the question and that diagnostic) and samples G
   completions `<thinking>...</thinking><teaching>...</teaching>`; log-probabilities and gradients are
   computed on exactly that prompt (not on the bare question: the teaching was sampled from this one);
3. the student answers again with only the `<teaching>` text added (`taught_prompt`); the teacher's
   thinking never reaches it;
4. the reward, by `reward_mode`:
   - "rule": the asymmetric baseline-vs-taught rule against the ground truth (atlas.reward.answer_match):
     teaching fixes a wrong answer: 1 + efficiency; both right: efficiency; teaching breaks a right
     answer: -1; both wrong: 0; efficiency = max(0, 1 - taught answer length / baseline length);
   - "rim": RIM judges (default helpfulness and process) shown the real question as the prompt, the
     student's post-teaching answer as the response, and the teaching, diagnostic, baseline and reference
     as context (judging the teacher's own text would reward teaching that reads well, not teaching
     that works);
   A teaching that gives the answer away (`atlas.reward.leaks_answer`: the reference's final answer found
   in it after normalisation, numbers compared as numbers, number words included) earns the reward's
   minimum (-1 by the rule, 0 from the judges) minus `leak_penalty` (default 1, >= 0), whatever the
   student then did: by construction below every honest outcome, so no group can make leaking pay (a
   penalty subtracted from a reward that reaches 2 left "leak and flip a wrong student" at
   1 + efficiency - 1, above an honest failure's 0).
   A completion without a `<teaching>` block earns the minimum itself: no more than the worst honest
   teaching, and more than a leak. Neither is judged (no judge call is spent on them); the student is
   still asked, so the accuracy metrics cover every completion.
The teacher is trained on the same model object its rollouts come from, so every rollout comes from the
weights being trained. The student is any chat backend with `chat_batch` (atlas.reward):
`LocalChatClient` for an atlas model in-process, `HTTPChatClient` for an OpenAI-compatible endpoint;
it is called greedily and a failed call stops the run with its error (a reward of 0 for a lost answer
would bias the teacher). Metrics per step: `baseline_accuracy`, `taught_accuracy`, `accuracy_delta`,
`improvement_rate` (wrong -> right), `degradation_rate` (right -> wrong), `teaching_len` (tokens),
`leak_rate`, `teaching_missing_frac`; the `best_samples` highest-reward teachings are kept in
`output_dir/best_teaching.json` at every save. Prompts are templates in the config ({question},
{diagnostic}, {teaching}); the defaults are written for this recipe.

The recipe is single-turn: a teaching is one message and the student answers in one; no tools run (the
teacher's rollouts are one-turn `sample_rollouts`, and the recipe takes no `tools`/`environment_factory`).

Left out: multi-step tasks with tool use, teaching a student that is itself being trained.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import atlas.distributed as ad
from atlas.model import Transformer
from atlas.reward.clients import ChatRequest
from atlas.reward.rules import answer_match, leaks_answer
from atlas.rl.grpo import GRPO, GRPOConfig
from atlas.sampler import SamplingParams
from atlas.train.data import prompt_messages, reference_of
from atlas.train.rollout import RolloutBatch, sample_rollouts

DIAGNOSTIC_PROMPT = "{question}\nDescribe your approach in one sentence."
TEACHER_PROMPT = ("Question: {question}\nThe student's approach: {diagnostic}\n"
                  "Think, then teach without giving the answer.")
TAUGHT_PROMPT = "{question}\nTeaching: {teaching}"
_TEACHING = re.compile(r"<teaching>(.*?)</teaching>", re.DOTALL)


@dataclass
class TeacherConfig(GRPOConfig):
    output_dir: str = "results/teacher"
    num_generations: int = 8
    max_new_tokens: int = 256  # the teacher's thinking + teaching
    student_model: str = "student"  # the model name the student backend serves
    student_max_new_tokens: int = 256
    diagnostic_max_new_tokens: int = 128
    diagnostic_prompt: str = DIAGNOSTIC_PROMPT
    teacher_prompt: str = TEACHER_PROMPT
    taught_prompt: str = TAUGHT_PROMPT
    reward_mode: Literal["rule", "rim"] = "rule"
    leak_penalty: float = 1.0
    best_samples: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, fields in (("diagnostic_prompt", ("question",)), ("teacher_prompt", ("question", "diagnostic")),
                            ("taught_prompt", ("question", "teaching"))):
            missing = [f for f in fields if "{" + f + "}" not in getattr(self, key)]
            if missing:
                raise ValueError(f"config key {key!r} must contain {', '.join('{' + f + '}' for f in missing)}")
        if self.leak_penalty < 0:
            raise ValueError(f"config key 'leak_penalty' must be >= 0, got {self.leak_penalty}")


def teaching_of(completion: str) -> str | None:
    """The text inside the teacher's last <teaching>...</teaching>, or None when there is none."""
    found = _TEACHING.findall(completion)
    return found[-1].strip() if found else None


RULE_FLOOR, RIM_FLOOR = -1.0, 0.0  # the least an honest teaching can earn: the rule's, the judges'


def asymmetric_reward(baseline_right: bool, taught_right: bool, baseline_len: int, taught_len: int) -> float:
    efficiency = max(0.0, 1.0 - taught_len / baseline_len) if baseline_len > 0 else 0.0
    if taught_right:
        return (1.0 if not baseline_right else 0.0) + efficiency
    return -1.0 if baseline_right else 0.0


class Teaching(GRPO):
    """`Teaching(teacher, tokenizer, student_client, TeacherConfig(...)).train(examples, eval_examples)`.

    examples: questions with references (atlas.data.Example, or dicts with "prompt" and "answer"/"reference").
    student_client: a chat backend serving `config.student_model`. judge: a RIM for reward_mode "rim"."""

    def __init__(self, teacher: Transformer, tokenizer, student_client, config: TeacherConfig,
                 ref_model: Transformer | None = None, judge=None):
        if config.reward_mode == "rim" and judge is None:
            raise ValueError("reward_mode 'rim' needs a judge: pass judge=atlas.reward.RIM(...)")
        self.student, self.judge = student_client, judge
        super().__init__(teacher, tokenizer, [], config, ref_model)  # rewards: `score`, from the student
        self.best: list[dict[str, Any]] = []

    # the student

    def ask(self, prompts: list[str], max_tokens: int) -> list[str]:
        """The student's greedy answers to user messages; a failed call stops the run."""
        requests = [ChatRequest.make(self.config.student_model, [{"role": "user", "content": p}], 0.0, max_tokens)
                    for p in prompts]
        results = self.student.chat_batch(requests) if requests else []
        failed = [r.error for r in results if r.text is None]
        if failed:
            raise RuntimeError(f"the student failed {len(failed)} of {len(results)} calls, e.g. {failed[0]}")
        return [r.text for r in results]

    def prompts_for(self, examples: list[Any], mine: list[int]) -> list[Any]:
        config = self.config
        questions = [_question(examples[i]) for i in mine]
        baselines = self.ask(questions, config.student_max_new_tokens)
        diagnostics = self.ask([config.diagnostic_prompt.format(question=q) for q in questions],
                               config.diagnostic_max_new_tokens)
        out: list[Any] = [None] * len(examples)
        for i, q, base, diag in zip(mine, questions, baselines, diagnostics):
            teacher_prompt = config.teacher_prompt.format(question=q, diagnostic=diag)
            out[i] = {"prompt": [{"role": "user", "content": teacher_prompt}], "question": q,
                      "answers": reference_of(examples[i]), "baseline": base, "diagnostic": diag}
        return out

    # the reward

    def score(self, batch: RolloutBatch) -> tuple[list[float], dict[str, float]]:
        """The teaching rewards of a rollout batch and the recipe's metrics (over every rank)."""
        rewards, counts, samples = self.teaching_reward(batch.prompts, batch.completions, **batch.columns)
        self.best = sorted(self.best + samples, key=lambda x: -x["reward"])[:self.config.best_samples]
        c = ad.all_reduce_sums(counts)
        n = c["n"]
        return rewards, {"baseline_accuracy": c["baseline_right"] / n, "taught_accuracy": c["taught_right"] / n,
                         "accuracy_delta": (c["taught_right"] - c["baseline_right"]) / n,
                         "improvement_rate": c["improved"] / n, "degradation_rate": c["degraded"] / n,
                         "teaching_len": c["teaching_tokens"] / n, "leak_rate": c["leaked"] / n,
                         "teaching_missing_frac": c["missing"] / n}

    def teaching_reward(self, prompts: list[Any], completions: list[str], *, question: list[str],
                        answers: list[str], baseline: list[str], diagnostic: list[str],
                        ) -> tuple[list[float], dict[str, float], list[dict[str, Any]]]:
        """(rewards, this rank's counts for the metrics, the scored teachings for best_teaching.json) of
        completions to the teacher prompts; see the module docstring."""
        config = self.config
        teachings = [teaching_of(c) for c in completions]
        taught = self.ask([config.taught_prompt.format(question=q, teaching=t or "")
                           for q, t in zip(question, teachings)], config.student_max_new_tokens)
        base_right = answer_match(question, baseline, answers=answers)
        taught_right = answer_match(question, taught, answers=answers)
        leaks = [t is not None and leaks_answer(t, a) for t, a in zip(teachings, answers)]
        floor = RULE_FLOOR if config.reward_mode == "rule" else RIM_FLOOR
        rewards = [floor - config.leak_penalty if leak else floor for leak in leaks]  # leaked or missing
        honest = [i for i, (t, leak) in enumerate(zip(teachings, leaks)) if t is not None and not leak]
        if config.reward_mode == "rule":
            for i in honest:
                rewards[i] = asymmetric_reward(base_right[i] >= 1, taught_right[i] >= 1, len(baseline[i]),
                                               len(taught[i]))
        elif honest:
            pick = lambda xs: [xs[i] for i in honest]  # noqa: E731
            judged = self.judge(pick(question), pick(taught), teaching=pick(teachings), diagnostic=pick(diagnostic),
                                baseline=pick(baseline), reference=pick(answers))
            for i, r in zip(honest, judged):
                rewards[i] = r
        counts = {"baseline_right": sum(b >= 1 for b in base_right), "taught_right": sum(t >= 1 for t in taught_right),
                  "improved": sum(t >= 1 > b for b, t in zip(base_right, taught_right)),
                  "degraded": sum(b >= 1 > t for b, t in zip(base_right, taught_right)),
                  "teaching_tokens": sum(len(self.tokenizer.encode(t, add_special_tokens=False))
                                         for t in teachings if t),
                  "leaked": sum(leaks), "missing": sum(t is None for t in teachings), "n": len(completions)}
        samples = [{"reward": r, "question": q, "teacher": c, "teaching": t, "student_after": ta,
                    "step": self.step_count + 1} for r, q, c, t, ta in zip(rewards, question, completions, teachings,
                                                                            taught)]
        return rewards, counts, samples

    # evaluation and saving

    def evaluate(self, examples) -> dict[str, float]:
        """The student alone vs with the teacher's greedy teaching, on held-out questions."""
        config = self.config
        mine = list(range(ad.rank(), len(examples), ad.world_size()))
        prompts = self.prompts_for(list(examples), mine)
        teacher_side = [prompts[i] for i in mine]
        params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0)
        batch = sample_rollouts(self.model, self.tokenizer, prompts, params, (config.seed, -1), self.sampler)
        teachings = [teaching_of(text) or "" for text in batch.completions]
        taught = self.ask([config.taught_prompt.format(question=p["question"], teaching=t)
                           for p, t in zip(teacher_side, teachings)], config.student_max_new_tokens)
        answers = [p["answers"] for p in teacher_side]
        questions = [p["question"] for p in teacher_side]
        base = answer_match(questions, [p["baseline"] for p in teacher_side], answers=answers)
        after = answer_match(questions, taught, answers=answers)
        c = ad.all_reduce_sums({"base": sum(base), "after": sum(after), "n": len(base),
                                "improved": sum(t >= 1 > b for b, t in zip(base, after)),
                                "degraded": sum(b >= 1 > t for b, t in zip(base, after))})
        n = c["n"]
        return {"baseline_accuracy": c["base"] / n, "taught_accuracy": c["after"] / n,
                "accuracy_delta": (c["after"] - c["base"]) / n, "improvement_rate": c["improved"] / n,
                "degradation_rate": c["degraded"] / n, "n": int(n)}

    def save(self) -> None:
        super().save()
        best = [s for part in ad.all_gather_object(self.best) for s in part]
        if ad.is_main():
            best = sorted(best, key=lambda x: -x["reward"])[:self.config.best_samples]
            (self.output_dir / "best_teaching.json").write_text(json.dumps(best, indent=2) + "\n")


def _question(example: Any) -> str:
    """The question text: the content of the example's last user message."""
    users = [m["content"] for m in prompt_messages(example) if m["role"] == "user"]
    if not users:
        raise ValueError(f"a teaching example needs a user question, got {str(example)[:120]!r}")
    return users[-1]
