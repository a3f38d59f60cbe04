"""An SAE's training tokens from the pairs ``lit-align fit`` reads.

The data is given as ``fit``'s ``data:`` section (a config file, ``--data.*`` settings, or both) and built as
:class:`~lit_align.data.PreferenceDataModule`: any source (file, dataset, mixture, task), layout, column map,
chat template and system prompt, rendered, tokenised, truncated and reported on exactly as ``fit`` does. Each pair
gives one sequence, its prompt then its chosen response; ``prompt_and_response`` keeps the activations of both,
``responses`` those of the response only. Special tokens (BOS, EOS, the template's role and end-of-turn tokens)
are never kept: they carry outlier activations an SAE should not spend features on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ArgumentParser

from lit_align.data import ChatRenderer, PreferenceDataModule
from lit_align.sae.activations import TokenSequence

PairTokens = Literal["prompt_and_response", "responses"]
DATA_CLASS = "lit_align.data.PreferenceDataModule"


def data_section(config: str | Path) -> dict[str, Any]:
    """The ``data:`` section of a ``lit-align fit`` config, as ``{class_path, init_args}``."""
    loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    section = loaded.get("data") if isinstance(loaded, dict) else None
    if not isinstance(section, dict):
        raise ValueError(f"{config}: no data: section; give the data as lit-align fit's config does "
                         "(data: {class_path: lit_align.data.PreferenceDataModule, init_args: {path: ...}})")
    return section if "class_path" in section else {"class_path": DATA_CLASS, "init_args": section}


def preference_data(
    section: dict[str, Any] | None, overrides: Sequence[str], default_tokenizer: str
) -> PreferenceDataModule:
    """Build the data module ``fit`` would build from ``section`` (``fit``'s ``data:``) and ``--data.*`` settings.

    Args:
        section: the ``data:`` section (:func:`data_section`), or ``None`` for settings alone.
        overrides: command-line settings, e.g. ``["--data.path=pairs.jsonl", "--data.columns={prompt: q}"]``.
        default_tokenizer: the tokenizer when the data names none and its pairs come from ``path`` (as ``fit``
            takes ``model.policy.path``).

    Raises:
        jsonargparse.ArgumentError: a setting that ``fit`` would refuse.
    """
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(PreferenceDataModule, "data", required=True)
    config = parser.parse_args(["--data", json.dumps(section or {"class_path": DATA_CLASS}), *overrides])
    init_args = config.data.init_args
    if init_args.get("tokenizer") is None and init_args.get("source") is None:
        init_args.tokenizer = default_tokenizer
    return parser.instantiate_classes(config).data


def pair_sequences(data: PreferenceDataModule, tokens: PairTokens, limit: int | None = None) -> list[TokenSequence]:
    """The prompt + chosen response of each pair ``data`` reads (training pairs, then validation pairs), with the
    tokens to keep marked: the response's or the whole sequence's, special tokens never.

    Args:
        data: the data module, set up (``setup("fit")``).
        tokens: ``prompt_and_response`` or ``responses``.
        limit: at most this many pairs.
    """
    special = ChatRenderer(data.tokenizer).special_ids
    sequences: list[TokenSequence] = []
    for split in [split for split in (data.train_set, data.val_set) if split is not None]:
        count = len(split) if limit is None else min(len(split), limit - len(sequences))
        if count <= 0:
            break
        pairs = split.select(range(count)).select_columns(["prompt_ids", "chosen_ids"])
        for prompt, response in zip(pairs["prompt_ids"], pairs["chosen_ids"], strict=True):
            ids = list(prompt) + list(response)
            wanted = [tokens == "prompt_and_response"] * len(prompt) + [True] * len(response)
            keep = [want and i not in special for want, i in zip(wanted, ids, strict=True)]
            sequences.append(TokenSequence(ids, keep))
    return sequences
