"""The foundation of on-policy training: the reward protocol and its implementations, a reward model trained on
preference pairs, and pairs built from scored samples (docs/online.md)."""

from lit_align.online.bradley_terry import bradley_terry_loss
from lit_align.online.classifier_reward import SequenceClassifierReward
from lit_align.online.classifier_spec import ClassifierSpec, build_classifier
from lit_align.online.pairs import PairBuilder, PairRule, ScoredPairs, pair_rows
from lit_align.online.reward import RewardFn, check_batch, checked_rewards
from lit_align.online.reward_model import RewardModel

__all__ = ["ClassifierSpec", "PairBuilder", "PairRule", "RewardFn", "RewardModel", "ScoredPairs",
           "SequenceClassifierReward", "bradley_terry_loss", "build_classifier", "check_batch", "checked_rewards",
           "pair_rows"]
