"""Per-step training schedules: pure functions of the step, so a resumed run sees exactly the
values an uninterrupted one would (nothing is decremented in place)."""
from __future__ import annotations


def linear_decay_lr(step: int, base_lr: float, num_iters: int, num_iters_decay: int) -> float:
    """StarGAN's schedule: ``base_lr`` for the first ``num_iters - num_iters_decay`` iterations,
    then a straight line that reaches exactly 0 at ``num_iters`` (the LR of 0-based ``step``).

    This is the paper's "linearly decay the learning rate to 0". The official code subtracts
    ``g_lr / num_iters_decay`` only every ``lr_update_step`` iterations, so its LR ends at
    99.9 % of the start: no decay in effect. ``num_iters_decay`` longer than the run is clipped
    to the run (the LR still starts at ``base_lr``); 0 means a constant LR.
    """
    decay = min(num_iters_decay, num_iters)
    if decay <= 0:
        return float(base_lr)
    start = num_iters - decay
    if step < start:
        return float(base_lr)
    return float(base_lr) * max(0.0, (num_iters - step) / decay)
