"""Reinforcement learning from rewards: GRPO (group-relative advantages, clipped ratio, KL to a reference).

    from atlas.rl import GRPO, GRPOConfig
    GRPO(model, tokenizer, reward_fns, GRPOConfig(...), ref_model=None).train(examples, eval_examples)

advantage.py (group_advantages), loss.py (policy_loss), grpo.py (the trainer), teacher.py (the adaptive-
teaching recipe: GRPO for a teacher whose reward is a frozen student's improvement). Runs the shared loop
of atlas.train; never imports atlas.distill.
"""

from atlas.rl.advantage import group_advantages
from atlas.rl.grpo import GRPO, GRPOConfig
from atlas.rl.loss import LossCounts, policy_loss
from atlas.rl.teacher import TeacherConfig, Teaching

__all__ = ["GRPO", "GRPOConfig", "LossCounts", "TeacherConfig", "Teaching", "group_advantages", "policy_loss"]
