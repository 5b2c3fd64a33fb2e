"""What every trainer shares, beneath atlas.rl and atlas.distill.

- trainer.py: `TrainConfig` (the shared config fields) and `Trainer` (the loop: sharding, data order,
  optimizer steps, evaluation, resume state and HF export, SIGTERM);
- optim.py: AdamW, the warmup + constant/cosine schedule, global gradient clipping, the non-finite guard;
- data.py: conversations to ids with assistant masks, the seeded data order, padded/packed micro-batches;
- metrics.py: metrics.jsonl, the progress line, W&B;
- evaluate.py: the greedy held-out evaluation (success rate, completion tokens).
"""

from atlas.train.evaluate import greedy_eval
from atlas.train.trainer import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer", "greedy_eval"]
