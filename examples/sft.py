"""SFT on the embedded default (or your model and traces): fine-tune on demonstrations.

    python examples/sft.py                                    # CPU, 2 cores: a few minutes
    torchrun --nproc_per_node=2 examples/sft.py
    python examples/sft.py --model PATH --traces traces.jsonl max_steps=500 lr=1e-5

A preset of `atlas train configs/sft.yaml` (atlas.recipes): the embedded student is fine-tuned on the
addition task's demonstrations; it prints the held-out loss and accuracy before and after, and where the
HF checkpoint is.
"""

import sys

from atlas.recipes import main

FLAGS = {"--model": "model", "--traces": "data.source", "--output-dir": "train.output_dir"}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default="sft", flags=FLAGS))
