"""Learning from a teacher: supervised fine-tuning on demonstrations (SFT) and on-policy distillation (GKD).

    from atlas.distill import SFT, SFTConfig
    SFT(model, tokenizer, SFTConfig(output_dir="results/sft", max_steps=200)).train(examples, eval_examples)
    GKD(student, teacher, tokenizer, GKDConfig(...), reward_fn=rule).train(examples, eval_examples)

Both run the shared loop of atlas.train (config fields, resume, metrics, HF export). rl/ and distill/ never
import each other: what both need lives in atlas.train.
"""

from atlas.distill.gkd import GKD, GKDConfig
from atlas.distill.sft import SFT, SFTConfig

__all__ = ["GKD", "GKDConfig", "SFT", "SFTConfig"]
