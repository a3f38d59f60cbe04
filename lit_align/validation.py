"""Up-front checks of settings, each failing with a message that names the setting and its value."""

from __future__ import annotations


def require_counts(**counts: int) -> None:
    """Refuse any count below 1 (``None`` means "unset" and passes)."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {name}={value}")


def require_positive(**values: float) -> None:
    """Refuse any value that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {name}={value}")
