"""Pure loss functions on plain tensors, for use outside lit-align's Lightning module.

Each returns ``(losses, chosen_rewards, rejected_rewards)``, one value per pair, rewards detached.
The math of each paper lives in its own file (``fdpo.py``, ``tdpo.py``, ...); this module gathers them.
"""

from lit_align.objectives.divergences import f_prime
from lit_align.objectives.fdpo import fdpo_loss
from lit_align.objectives.fpo import fpo_loss
from lit_align.objectives.pairwise import pairwise_loss
from lit_align.objectives.sft import sft_loss
from lit_align.objectives.simpo import simpo_loss
from lit_align.objectives.tdpo import tdpo_loss

__all__ = ["f_prime", "fdpo_loss", "fpo_loss", "pairwise_loss", "sft_loss", "simpo_loss", "tdpo_loss"]
