"""Pure loss functions on plain tensors, for use outside lit-align's Lightning module.

Each loss returns ``(losses, chosen_rewards, rejected_rewards)``, one value per pair, rewards detached; LD-DPO's
``pair_desensitised_logps`` and WPO's ``wpo_weights`` are the inputs and weights that compose with any of them.
The math of each paper lives in its own file (``fdpo.py``, ``tdpo.py``, ...); this module gathers them.
"""

from lit_align.objectives.divergences import f_prime
from lit_align.objectives.fdpo import fdpo_loss
from lit_align.objectives.fpo import fpo_loss
from lit_align.objectives.ld_dpo import pair_desensitised_logps
from lit_align.objectives.pairwise import pairwise_loss
from lit_align.objectives.sft import sft_loss
from lit_align.objectives.simpo import simpo_loss
from lit_align.objectives.tdpo import tdpo_loss
from lit_align.objectives.wpo import wpo_weights

__all__ = ["f_prime", "fdpo_loss", "fpo_loss", "pair_desensitised_logps", "pairwise_loss", "sft_loss", "simpo_loss",
           "tdpo_loss", "wpo_weights"]
