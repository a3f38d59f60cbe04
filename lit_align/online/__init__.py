"""On-policy training (docs/online.md): the reward protocol and its implementations, a reward model trained on
preference pairs, pairs built from scored samples, the prompts-only data module and the on-policy module."""

from lit_align.online.bradley_terry import bradley_terry_loss
from lit_align.online.classifier_reward import SequenceClassifierReward
from lit_align.online.classifier_spec import ClassifierSpec, build_classifier
from lit_align.online.on_policy import OnPolicyModule
from lit_align.online.pairs import PairBuilder, PairRule, ScoredPairs, pair_rows
from lit_align.online.prompts import PromptDataModule
from lit_align.online.reward import RewardFn, check_batch, checked_rewards
from lit_align.online.reward_model import RewardModel

__all__ = ["ClassifierSpec", "OnPolicyModule", "PairBuilder", "PairRule", "PromptDataModule", "RewardFn", "RewardModel",
           "ScoredPairs", "SequenceClassifierReward", "bradley_terry_loss", "build_classifier", "check_batch",
           "checked_rewards", "pair_rows"]
