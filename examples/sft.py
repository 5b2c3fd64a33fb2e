"""SFT on the embedded default (or your model and traces): fine-tune on demonstrations.

    python examples/sft.py                                    # CPU, 2 cores: a few minutes
    torchrun --nproc_per_node=2 examples/sft.py
    python examples/sft.py --model PATH --traces traces.jsonl max_steps=500 lr=1e-5

The settings are configs/sft.yaml's (`atlas train configs/sft.yaml` runs the same recipe): the embedded
student is fine-tuned on the addition task's demonstrations; it prints the held-out loss and accuracy
before and after, and where the HF checkpoint is.
"""

import sys

from atlas.cli import run_example
from atlas.distill import SFT
from atlas.recipes import load_data, load_model
from atlas.reward import answer_match


def train(recipe):
    train_examples, eval_examples, _ = load_data(recipe)  # the embedded task, or your (review-gated) traces
    model, tokenizer = load_model(recipe, recipe.model)
    return SFT(model, tokenizer, recipe.train, reward_fn=answer_match).train(train_examples, eval_examples)


FLAGS = {"--model": "model", "--traces": "data.source", "--output-dir": "train.output_dir"}

if __name__ == "__main__":
    sys.exit(run_example("sft", train, FLAGS))
