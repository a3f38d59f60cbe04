"""Up-front checks of settings, each failing with a :class:`~lit_align.errors.ConfigError` that names the
setting, its value and what was expected; and the restricted types that let the CLI refuse a value at parse time."""

from __future__ import annotations

from jsonargparse.typing import restricted_number_type

from lit_align.errors import ConfigError

HoldOutFraction = restricted_number_type("HoldOutFraction", float, [(">=", 0), ("<", 1)])
"""A fraction in [0, 1): the share of pairs held out for validation (0 holds out none)."""


def require_counts(**counts: int) -> None:
    """Refuse any count below 1 (``None`` means "unset" and passes)."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ConfigError(name, value, f"{name} must be >= 1")


def require_positive(**values: float) -> None:
    """Refuse any value that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(name, value, f"{name} must be > 0")


def check_vocabulary(tokenizer, embedding_rows: int, tokenizer_key: str = "data.tokenizer") -> None:
    """Refuse a tokenizer whose ids reach past the model's embedding table (``len(tokenizer)`` ids, the added
    tokens included, against ``embedding_rows``): the first batch would fail with a bare ``IndexError``."""
    if len(tokenizer) > embedding_rows:
        raise ConfigError(
            tokenizer_key, tokenizer.name_or_path,
            f"the tokenizer has {len(tokenizer)} tokens but the policy's embedding only {embedding_rows} rows; use "
            "the policy's own tokenizer (or resize the model's embeddings and save it)",
        )
