"""Preference data: row formats -> tokenised pairs -> batches -> ``PreferenceDataModule``."""

from lit_align.data.collator import PairCollator
from lit_align.data.datamodule import PreferenceDataModule, load_rows
from lit_align.data.formats import BadRow, RowFormat, split_row
from lit_align.data.tokenize import LengthSettings, PairTokenizer, TruncationMode

__all__ = [
    "BadRow",
    "LengthSettings",
    "PairCollator",
    "PairTokenizer",
    "PreferenceDataModule",
    "RowFormat",
    "TruncationMode",
    "load_rows",
    "split_row",
]
