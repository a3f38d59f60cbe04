"""The sentiment lexicon shared by the review grammar (:mod:`corpus`) and the oracle reward (:mod:`oracle`).

Each sentiment word carries a graded weight: strong words ±2, plain ones ±1.5 or ±1, faint ones ±0.5.
Modifiers change the next sentiment word: an intensifier scales it, a negator flips and halves it
("not bad" is mildly positive, "not great" mildly negative). Every other word is neutral.
"""

from __future__ import annotations

POSITIVE_ADJECTIVES: dict[str, float] = {
    "brilliant": 2.0, "wonderful": 2.0, "superb": 2.0, "stunning": 2.0, "excellent": 2.0, "masterful": 2.0,
    "great": 1.5, "beautiful": 1.5, "moving": 1.5, "delightful": 1.5, "charming": 1.5, "gripping": 1.5,
    "good": 1.0, "nice": 1.0, "fun": 1.0, "solid": 1.0, "enjoyable": 1.0, "clever": 1.0,
    "decent": 0.5, "fine": 0.5, "pleasant": 0.5,
}  # fmt: skip
NEGATIVE_ADJECTIVES: dict[str, float] = {
    "awful": -2.0, "terrible": -2.0, "dreadful": -2.0, "horrible": -2.0, "painful": -2.0, "atrocious": -2.0,
    "bad": -1.5, "boring": -1.5, "dull": -1.5, "weak": -1.5, "clumsy": -1.5, "messy": -1.5,
    "bland": -1.0, "forgettable": -1.0, "silly": -1.0, "flat": -1.0, "tedious": -1.0,
    "uneven": -0.5, "predictable": -0.5, "thin": -0.5,
}  # fmt: skip
POSITIVE_VERBS: dict[str, float] = {"loved": 2.0, "adored": 2.0, "enjoyed": 1.5, "liked": 1.0, "recommend": 1.0}
NEGATIVE_VERBS: dict[str, float] = {"hated": -2.0, "disliked": -1.5, "regret": -1.5}

WEIGHTS: dict[str, float] = {**POSITIVE_ADJECTIVES, **NEGATIVE_ADJECTIVES, **POSITIVE_VERBS, **NEGATIVE_VERBS}
"""Weight of every sentiment word."""

INTENSIFIERS: dict[str, float] = {"very": 1.5, "really": 1.5, "truly": 1.5, "somewhat": 0.5, "fairly": 0.5}
"""Factor applied to the next sentiment word."""
NEGATORS: frozenset[str] = frozenset({"not", "never"})
NEGATION_FACTOR = -0.5
"""Factor applied to a negated sentiment word."""
SCOPE_BREAKS: frozenset[str] = frozenset({".", ",", "but", "and"})
"""Words that end the scope of a pending modifier."""
