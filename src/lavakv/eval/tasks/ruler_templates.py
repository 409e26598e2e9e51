"""RULER's needle templates and random values, shared by the offline tasks (``ruler``) and the data-backed ones
(``ruler_data``)."""

from __future__ import annotations

import random
import uuid
from typing import Any

from lavakv.eval.words import adjectives, nouns

NEEDLE = "One of the special magic {kind} for {key} is: {value}."
# RULER's niah template with its single-needle rewrite (Some -> A, are all -> is, are -> is, singular kind)
NIAH_PREFIX = ("A special magic {kind} is hidden within the following text. Make sure to memorize it. I will quiz "
               "you about the {kind} afterwards.\n")
NIAH_QUERY = "\nWhat is the special magic {kind} for {query} mentioned in the provided text?"
NIAH_ANSWER = " The special magic {kind} for {query} mentioned in the provided text is"

# (context, query, answer_prefix, references, meta)
Parts = tuple[str, str, str, list[str], dict[str, Any]]


def random_value(rng: random.Random, kind: str) -> str:
    """A random needle key or value of ``kind``: "numbers" (7 digits), "words" (adjective-noun), else a uuid."""
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return f"{rng.choice(adjectives())}-{rng.choice(nouns())}"
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def distinct_values(rng: random.Random, kind: str, count: int) -> list[str]:
    """``count`` different :func:`random_value` draws of ``kind``, in draw order."""
    values: list[str] = []
    while len(values) < count:
        value = random_value(rng, kind)
        if value not in values:
            values.append(value)
    return values
