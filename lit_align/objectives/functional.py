"""Pure loss functions on plain tensors, for use outside lit-align's Lightning module.

Each returns ``(losses, chosen_rewards, rejected_rewards)``, one value per pair, rewards detached.
The math of each paper lives in its own file (``fdpo.py``, ``tdpo.py``, ...); this module gathers them.
"""

from lit_align.objectives.fdpo import fdpo_loss, f_prime

__all__ = ["f_prime", "fdpo_loss"]
