"""How the resume tests cut a run: a real SIGTERM to this process right after a trainer's given step, which
the trainer handles between steps (save, then stop) as it would under torchrun."""

import os
import signal


def sigterm_after(trainer, step: int):
    """`trainer`, its `step` wrapped to send SIGTERM once `step_count` reaches `step`."""
    real_step = trainer.step

    def step_then_sigterm(batch):
        row = real_step(batch)
        if trainer.step_count == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return row

    trainer.step = step_then_sigterm
    return trainer
