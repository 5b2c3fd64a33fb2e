"""GRPO on the embedded default (or your model and traces), the headline run of atlas.

    python examples/grpo.py                                   # CPU, 2 cores: a few minutes
    torchrun --nproc_per_node=2 examples/grpo.py              # the same run on 2 processes (FSDP2)
    python examples/grpo.py --model Qwen/Qwen2.5-0.5B-Instruct --traces traces.jsonl --reward rim \\
        max_new_tokens=256 lr=1e-6
    python examples/grpo.py max_steps=6 save_every=3           # key=value: the trainer's config (GRPOConfig)
    python examples/grpo.py resume=true                        # continue an interrupted run

Across two nodes (8 GPUs each), with torchrun's rendezvous, the same command on both:

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=NODE0_HOST:29500 \\
        --rdzv_id=grpo-run examples/grpo.py --config my_grpo.yaml

The settings are configs/grpo.yaml's (`atlas train configs/grpo.yaml` runs the same recipe): the embedded
student (10-40% held-out) learns two-digit addition from the exact rule reward. `train` below is the
whole run in the API's own calls; the last lines report the mean reward over the first and last 10% of
the steps, the held-out accuracy before and after, and where the HF checkpoint is.
"""

import sys

from atlas.cli import run_example
from atlas.recipes import load_data, load_model
from atlas.reward import answer_match, judge_reward
from atlas.rl import GRPO


def train(recipe):
    train_examples, eval_examples, _ = load_data(recipe)  # the embedded task, or your (review-gated) traces
    model, tokenizer = load_model(recipe, recipe.model)  # fp32 master weights; sharded under torchrun
    reward = judge_reward() if recipe.reward == "rim" else answer_match  # RIM judges, or the exact rule
    return GRPO(model, tokenizer, reward, recipe.train).train(train_examples, eval_examples)


FLAGS = {"--model": "model", "--traces": "data.source", "--reward": "reward", "--output-dir": "train.output_dir"}

if __name__ == "__main__":
    sys.exit(run_example("grpo", train, FLAGS))
