"""Training stages and their loss weights (method.md section 6).

| stage | active parts | loss |
|---|---|---|
| 1 warmup | segmentation only | L = L_Dice |
| 2 transition | + value decoder | L = (1 - lambda) L_Dice + lambda L_value |
| 3 full RL | + policy decoder | L = (1 - alpha - beta) L_Dice + alpha L_value + beta L_policy |

**decisions**: stage lengths are fractions of the training budget (``rl.warmup`` 0.3,
``rl.transition`` 0.2, the rest full RL); ``rl.lam`` 0.3, ``rl.alpha`` 0.2, ``rl.beta`` 0.1.
"""

from __future__ import annotations


def stage_at(iteration: int, total: int, warmup: float = 0.3, transition: float = 0.2) -> int:
    """stage_at: the stage (1, 2 or 3) of the 0-based optimiser step ``iteration`` of ``total``.

    Stage 1 covers steps [0, round(warmup * total)), stage 2 up to
    round((warmup + transition) * total), stage 3 the rest. Integer boundaries avoid float
    round-off (0.7 * 10 = 7.000000000000001).
    """
    end_warmup = round(warmup * total)
    end_transition = round((warmup + transition) * total)
    if iteration < end_warmup:
        return 1
    if iteration < end_transition:
        return 2
    return 3


def stage_weights(
    stage: int, lam: float = 0.3, alpha: float = 0.2, beta: float = 0.1
) -> tuple[float, float, float]:
    """stage_weights: (w_seg, w_value, w_policy) of the stage's loss, per the table above."""
    if stage == 1:
        return 1.0, 0.0, 0.0
    if stage == 2:
        return 1.0 - lam, lam, 0.0
    if stage == 3:
        return 1.0 - alpha - beta, alpha, beta
    raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
