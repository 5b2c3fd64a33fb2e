"""GKD on the embedded default (or your student, teacher and traces): on-policy distillation.

    python examples/gkd.py                                    # CPU, 2 cores: under a minute
    torchrun --nproc_per_node=2 examples/gkd.py
    python examples/gkd.py --student Qwen/Qwen2.5-0.5B-Instruct --teacher Qwen/Qwen2.5-7B-Instruct \\
        --traces traces.jsonl max_new_tokens=512 lr=5e-6 param_dtype=bfloat16

A preset of `atlas train configs/gkd.yaml` (atlas.recipes): the embedded teacher is distilled into the
smaller, weaker embedded student on the student's own samples; it ends by printing the student's held-out
success rate and mean completion tokens before and after, the teacher's, and where the HF checkpoint is.
"""

import sys

from atlas.recipes import main

FLAGS = {"--student": "model", "--teacher": "teacher", "--traces": "data.source", "--output-dir": "train.output_dir"}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default="gkd", flags=FLAGS))
