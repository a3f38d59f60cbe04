"""Alignment objectives: pure functions of per-pair tensors, selectable in YAML by ``class_path``."""

from lit_align.objectives.base import Need, Objective, ObjectiveOutput, PreferenceInputs
from lit_align.objectives.fdpo import DPO, FDPO
from lit_align.objectives.fpo import FPO
from lit_align.objectives.mixture import Mixture
from lit_align.objectives.pairwise import PairwiseObjective
from lit_align.objectives.sft import SFT
from lit_align.objectives.simpo import SimPO
from lit_align.objectives.tdpo import TDPO

__all__ = [
    "DPO", "FDPO", "FPO", "Mixture", "Need", "Objective", "ObjectiveOutput", "PairwiseObjective", "PreferenceInputs",
    "SFT", "SimPO", "TDPO",
]
