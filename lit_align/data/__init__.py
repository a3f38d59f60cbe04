"""Preference data: sources -> row layouts -> tokenised pairs -> batches -> ``PreferenceDataModule``."""

from lit_align.data.chat import ChatRenderer, split_row
from lit_align.data.collator import PairCollator
from lit_align.data.datamodule import PreferenceDataModule
from lit_align.data.layouts import BadRow, Layout, RowFormat
from lit_align.data.report import describe_report
from lit_align.data.sources import DataSource, Mixture, PairSource
from lit_align.data.tokenize import LengthSettings, PairTokenizer, TruncationMode

__all__ = [
    "BadRow",
    "ChatRenderer",
    "DataSource",
    "Layout",
    "LengthSettings",
    "Mixture",
    "PairCollator",
    "PairSource",
    "PairTokenizer",
    "PreferenceDataModule",
    "RowFormat",
    "TruncationMode",
    "describe_report",
    "split_row",
]
