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

It is a preset of `atlas train configs/grpo.yaml` (atlas.recipes): the embedded student (10-40% held-out)
learns two-digit addition from the exact rule reward. The last lines report the mean reward over the
first and last 10% of the steps, the held-out accuracy before and after, and where the HF checkpoint is.
"""

import sys

from atlas.recipes import main

FLAGS = {"--model": "model", "--traces": "data.source", "--reward": "reward", "--output-dir": "train.output_dir"}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default="grpo", flags=FLAGS))
