"""GKD on the embedded default (or your student, teacher and traces): on-policy distillation.

    python examples/gkd.py                                    # CPU, 2 cores: under a minute
    torchrun --nproc_per_node=2 examples/gkd.py
    python examples/gkd.py --student Qwen/Qwen2.5-0.5B-Instruct --teacher Qwen/Qwen2.5-7B-Instruct \\
        --traces traces.jsonl max_new_tokens=512 lr=5e-6 param_dtype=bfloat16

The settings are configs/gkd.yaml's (`atlas train configs/gkd.yaml` runs the same recipe): the embedded
teacher is distilled into the smaller, weaker embedded student on the student's own samples; it ends by
printing the student's held-out success rate and mean completion tokens before and after, the
teacher's, and where the HF checkpoint is.
"""

import sys

from atlas.cli import run_example
from atlas.distill import GKD
from atlas.recipes import load_data, load_model
from atlas.reward import answer_match, judge_reward


def train(recipe):
    train_examples, eval_examples, _ = load_data(recipe)  # the embedded task, or your (review-gated) traces
    student, tokenizer = load_model(recipe, recipe.model)  # trained: fp32 master weights
    teacher, teacher_tokenizer = load_model(recipe, recipe.teacher, frozen=True)  # frozen: the compute dtype
    success = judge_reward() if recipe.reward == "rim" else answer_match  # what held-out success means
    return GKD(student, teacher, tokenizer, recipe.train, reward_fn=success,
               teacher_tokenizer=teacher_tokenizer).train(train_examples, eval_examples)


FLAGS = {"--student": "model", "--teacher": "teacher", "--traces": "data.source", "--output-dir": "train.output_dir"}

if __name__ == "__main__":
    sys.exit(run_example("gkd", train, FLAGS))
