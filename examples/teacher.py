"""The adaptive-teaching recipe on the embedded default (or your teacher, student and traces).

    python examples/teacher.py                                 # CPU, 2 cores: a few minutes
    torchrun --nproc_per_node=2 examples/teacher.py
    python examples/teacher.py --teacher PATH --student-endpoint http://localhost:8000/v1 \\
        student_model=Qwen/Qwen2.5-7B-Instruct --traces traces.jsonl reward_mode=rim

The settings are configs/teacher.yaml's (`atlas train configs/teacher.yaml` runs the same recipe): the
embedded teaching teacher learns, by GRPO on the frozen embedded teaching student's improvement, to
write the hint that helps (a correct partial result, never the answer). It prints the student's held-out
accuracy alone and with the teacher's teaching at the start and at the end, and where the teacher's HF
checkpoint is.
"""

import sys

from atlas.cli import run_example
from atlas.recipes import build


def train(recipe):
    # the teacher trained by GRPO, the student served in-process (student:) or over HTTP (student_endpoint:),
    # RIM judges for reward_mode=rim: atlas.recipes.build writes out Teaching(teacher, tokenizer, student, ...)
    trainer, train_examples, eval_examples, _ = build(recipe)
    return trainer.train(train_examples, eval_examples)


FLAGS = {"--teacher": "model", "--student": "student", "--student-endpoint": "student_endpoint",
         "--traces": "data.source", "--output-dir": "train.output_dir"}

if __name__ == "__main__":
    sys.exit(run_example("teacher", train, FLAGS))
