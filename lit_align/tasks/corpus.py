"""A synthetic movie-review corpus from a small grammar, the training text of the controlled task.

Each review is a prompt (an opening line naming a film: ``"i watched the silent river last night ."``) and
a continuation of two to four sentences. A review has a latent sentiment ``z ∈ [-1, 1]``, drawn uniformly and
shifted by the prompt's lean (``"i had high hopes for ..."`` leans negative); each sentence is positive with
probability ``0.8 (1 + z) / 2``, negative with ``0.8 (1 - z) / 2``, neutral otherwise, and is written with a
random template, intensifier or negation (``"the pacing was not very dull ."``). Reviews therefore range from
glowing through mixed to scathing, and the oracle reward of :mod:`lit_align.tasks.oracle` is spread over
(0, 1). Text is lower case with punctuation as separate words.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lit_align.tasks.lexicon import (
    NEGATIVE_ADJECTIVES,
    NEGATIVE_VERBS,
    POSITIVE_ADJECTIVES,
    POSITIVE_VERBS,
)

TITLE_WORDS = (
    "silent last broken golden hidden long empty distant frozen burning lost secret little final crimson "
    "quiet wild paper iron northern"
).split()
TITLE_NOUNS = (
    "river garden house city road summer letter mountain island kingdom mirror harbor station forest "
    "promise horizon winter machine song ghost"
).split()
COMPANIONS = "friend sister brother father mother wife husband kids roommate partner".split()
GENRES = [
    "drama",
    "comedy",
    "thriller",
    "western",
    "musical",
    "romance",
    "horror film",
    "mystery",
    "documentary",
    "war film",
]
DIRECTORS = [
    "ana reyes",
    "tom becker",
    "lena ward",
    "omar haddad",
    "yuki sato",
    "paul grant",
    "nina kovac",
    "sam ortiz",
]
TOPICS = [
    "a lost dog",
    "two brothers",
    "a small town",
    "an old sailor",
    "a failing band",
    "a stolen painting",
    "a long war",
    "first love",
]
DAYS = "sunday monday friday saturday evening".split()
PLACES = ["paris", "a small village", "the desert", "new york", "the mountains", "an old hotel"]
ASPECTS = [
    "acting",
    "story",
    "plot",
    "script",
    "music",
    "ending",
    "camera work",
    "dialogue",
    "pacing",
    "cast",
    "soundtrack",
    "direction",
    "lead actor",
    "set design",
    "humor",
]
NEUTRAL_ADJECTIVES = "long short quiet simple unusual familiar different modern colorful loud".split()
INTENSIFIER_WORDS = ("very", "really", "truly", "somewhat", "fairly")
AUDIENCES = ["anyone", "my friends", "everyone", "fans of the genre", "families"]

PROMPTS: tuple[tuple[str, float], ...] = (
    ("i watched {title} last night .", 0.0),
    ("i went to see {title} with my {companion} .", 0.0),
    ("{title} is the new {genre} from {director} .", 0.0),
    ("here is my review of {title} .", 0.0),
    ("i had high hopes for {title} .", -0.3),
    ("i did not expect much from {title} .", 0.3),
    ("after years of waiting , {title} is finally out .", 0.0),
    ("{director} returns with {title} , a {genre} about {topic} .", 0.0),
    ("we rented {title} on a rainy {day} .", 0.0),
    ("my {companion} picked {title} for movie night .", 0.0),
)
"""Prompt templates and their lean, added to the review's latent sentiment."""


@dataclass(frozen=True)
class Review:
    """One review: the prompt and its continuation (which starts with a space, so ``prompt + continuation``
    is the whole text)."""

    prompt: str
    continuation: str

    @property
    def text(self) -> str:
        return self.prompt + self.continuation


def make_prompt(rng: random.Random) -> tuple[str, float]:
    """A random review opening and its sentiment lean."""
    template, lean = rng.choice(PROMPTS)
    title = f"the {rng.choice(TITLE_WORDS)} {rng.choice(TITLE_NOUNS)}"
    prompt = template.format(
        title=title,
        companion=rng.choice(COMPANIONS),
        genre=rng.choice(GENRES),
        director=rng.choice(DIRECTORS),
        topic=rng.choice(TOPICS),
        day=rng.choice(DAYS),
    )
    return prompt, lean


def make_review(rng: random.Random) -> Review:
    """A random review: a prompt and a two- to four-sentence continuation."""
    prompt, lean = make_prompt(rng)
    z = max(-1.0, min(1.0, rng.uniform(-1.0, 1.0) + lean))
    sentences = [_sentence(rng, _polarity(rng, z)) for _ in range(rng.randint(2, 4))]
    return Review(prompt, " " + " ".join(sentences))


def unique_prompts(n: int, rng: random.Random, exclude: set[str]) -> list[str]:
    """``n`` distinct prompts, none of them in ``exclude``."""
    prompts: list[str] = []
    seen = set(exclude)
    for _ in range(1000 * n + 1000):
        if len(prompts) == n:
            return prompts
        prompt, _ = make_prompt(rng)
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    raise ValueError(f"could not draw {n} distinct unseen prompts from the grammar; ask for fewer")


def _polarity(rng: random.Random, z: float) -> int:
    u = rng.random()
    if u < 0.4 * (1 + z):
        return 1
    if u < 0.8:
        return -1
    return 0


def _phrase(rng: random.Random, polarity: int) -> str:
    """An adjective phrase of the given polarity, possibly intensified or a negated opposite."""
    same, opposite = (
        (POSITIVE_ADJECTIVES, NEGATIVE_ADJECTIVES) if polarity > 0 else (NEGATIVE_ADJECTIVES, POSITIVE_ADJECTIVES)
    )
    intensifier = rng.choice(INTENSIFIER_WORDS) + " " if rng.random() < 0.3 else ""
    if rng.random() < 0.15:
        return f"not {intensifier}{rng.choice(list(opposite))}"
    return f"{intensifier}{rng.choice(list(same))}"


def _sentence(rng: random.Random, polarity: int) -> str:
    if polarity == 0:
        return _neutral_sentence(rng)
    verbs = POSITIVE_VERBS if polarity > 0 else NEGATIVE_VERBS
    verb = rng.choice([v for v in verbs if v not in ("recommend", "regret")])
    kind = rng.randrange(6)
    if kind == 0:
        return f"i {verb} the {rng.choice(ASPECTS)} ."
    if kind == 1:
        return f"overall it was a {_phrase(rng, polarity)} film ."
    if kind == 2:
        return (
            f"i would recommend it to {rng.choice(AUDIENCES)} ."
            if polarity > 0
            else rng.choice(["i would not recommend it .", "i regret watching it ."])
        )
    if kind == 3:
        return (
            f"the {rng.choice(ASPECTS)} was {_phrase(rng, polarity)} , but the {rng.choice(ASPECTS)} "
            f"was {_phrase(rng, -polarity)} ."
        )
    return f"the {rng.choice(ASPECTS)} {rng.choice(['was', 'is', 'felt'])} {_phrase(rng, polarity)} ."


def _neutral_sentence(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return f"it runs about {rng.choice(['two', 'three', 'one and a half'])} hours ."
    if kind == 1:
        return f"the film is set in {rng.choice(PLACES)} ."
    return f"the {rng.choice(ASPECTS)} was {rng.choice(NEUTRAL_ADJECTIVES)} ."
