"""Offline needle-in-a-haystack prompts: generated filler prose, one needle at a depth, length in model tokens.

The filler is made here from a small vocabulary of plain templated sentences (weather, cities, trains, markets,
numbers) drawn by a seeded generator, so the text may be shipped and every haystack is reproducible. The needle is
``"The special magic number for {key} is: {value}."`` with a random word-pair key and a seven-digit value; the
question asks for that number (EVALUATION.md, needle in a haystack).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NEEDLE = "The special magic number for {key} is: {value}."
QUESTION = "What is the special magic number for {key}?"
ANSWER_PREFIX = "The special magic number for {key} is:"

_CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Quebec", "Tunis", "Perth", "Bergen", "Cusco", "Hanoi",
           "Porto", "Dakar", "Leeds", "Malmo", "Tartu", "Zagreb", "Accra", "Austin", "Kyoto"]
_WEATHER = ["sunny", "cloudy", "windy", "foggy", "rainy", "mild", "cold", "humid", "clear", "stormy"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_THINGS = ["bridges", "bakeries", "libraries", "parks", "museums", "bicycles", "gardens", "ferries", "markets",
           "schools", "theatres", "fountains"]
_GOODS = ["apples", "bread", "cheese", "rice", "coffee", "tea", "onions", "lemons", "fish", "honey", "beans"]
_COLOURS = ["red", "blue", "green", "yellow", "grey", "white", "orange", "brown"]
_ADJECTIVES = ["quiet", "bright", "narrow", "ancient", "busy", "gentle", "hidden", "silver", "wooden", "distant",
               "golden", "hollow", "northern", "patient", "rapid", "velvet"]
_NOUNS = ["harbor", "meadow", "lantern", "canyon", "orchard", "beacon", "glacier", "compass", "falcon", "river",
          "quarry", "summit", "thistle", "anchor", "willow", "ember"]
_TEMPLATES = [
    "The weather in {city} was {weather} on {day}.",
    "{city} has {n} {things} and most of them are {colour}.",
    "On {day} the train from {city} to {city2} left {n} minutes late.",
    "A market in {city} sold {n} crates of {goods} before noon.",
    "The {adjective} {noun} near {city} is visited by {n} people every {day}.",
    "Someone in {city} painted {n} {things} {colour} last year.",
    "The forecast for {city} says it will be {weather} until {day}.",
    "There are {n} {colour} boats in the {adjective} harbor of {city}.",
    "In {city} the price of {goods} went up by {small} percent.",
    "A {adjective} road connects {city} and {city2} across {n} kilometres of hills.",
    "Every {day} the library in {city} lends out {n} books about {things}.",
    "The {noun} on the hill above {city} was {weather} and {adjective} this morning.",
    "Farmers near {city2} grew {n} tonnes of {goods} this season.",
    "It takes {small} hours to walk from the {adjective} {noun} to the centre of {city}.",
]


@dataclass(frozen=True)
class Haystack:
    """One needle-in-a-haystack item.

    Attributes:
        context: the haystack text with the needle inside.
        question: the question about the needle.
        answer: the needle's value (a seven-digit number as text).
        answer_prefix: text to start the answer with, so that the next tokens should be the number.
        key: the needle's key.
        depth: where the needle was asked to go, 0.0 (start) to 1.0 (end).
        tokens: the context's length in tokens of the tokenizer it was built with (no special tokens).
    """

    context: str
    question: str
    answer: str
    answer_prefix: str
    key: str
    depth: float
    tokens: int


def filler_sentence(rng: random.Random) -> str:
    """One random filler sentence (never mentions a magic number)."""
    city, city2 = rng.sample(_CITIES, 2)
    return rng.choice(_TEMPLATES).format(
        city=city, city2=city2, weather=rng.choice(_WEATHER), day=rng.choice(_DAYS), things=rng.choice(_THINGS),
        goods=rng.choice(_GOODS), colour=rng.choice(_COLOURS), adjective=rng.choice(_ADJECTIVES),
        noun=rng.choice(_NOUNS), n=rng.randint(2, 999), small=rng.randint(2, 40),
    )


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_haystack(tokenizer, target_tokens: int, depth: float = 0.5, seed: int = 0) -> Haystack:
    """Build a haystack of at most ``target_tokens`` tokens (as ``tokenizer`` counts them) with one needle.

    Args:
        tokenizer: the model's tokenizer (any callable returning ``{"input_ids": [...]}``).
        target_tokens: wanted context length in tokens; the result is within one filler sentence below it.
        depth: needle position as a fraction of the filler sentences, 0.0 = first, 1.0 = last.
        seed: seeds the filler, the key and the value.

    Raises:
        ValueError: ``depth`` outside [0, 1], or ``target_tokens`` too small to hold the needle.
    """
    if not 0.0 <= float(depth) <= 1.0:
        raise ValueError(f"depth must be a fraction in [0, 1] (0 = start, 1 = end), got {depth}")
    rng = random.Random(seed)
    key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
    value = str(rng.randint(1_000_000, 9_999_999))
    needle = NEEDLE.format(key=key, value=value)
    needle_tokens = _count(tokenizer, needle)
    if target_tokens < 2 * needle_tokens:
        raise ValueError(
            f"target_tokens={target_tokens} is too small: the needle alone is {needle_tokens} tokens; "
            f"use at least {2 * needle_tokens}"
        )
    sentences: list[str] = []
    estimate = needle_tokens
    while estimate < target_tokens:  # per-sentence counts (+1 for the joining space) slightly overestimate
        sentences.append(filler_sentence(rng))
        estimate += _count(tokenizer, " " + sentences[-1])

    def assemble(filler: list[str]) -> str:
        at = round(float(depth) * len(filler))
        return " ".join(filler[:at] + [needle] + filler[at:])

    context = assemble(sentences)
    tokens = _count(tokenizer, context)
    while tokens > target_tokens and sentences:
        sentences.pop()
        context = assemble(sentences)
        tokens = _count(tokenizer, context)
    return Haystack(
        context=context, question=QUESTION.format(key=key), answer=value, answer_prefix=ANSWER_PREFIX.format(key=key),
        key=key, depth=float(depth), tokens=tokens,
    )


def normalize(text: str) -> str:
    """Lower-case, digit-group separators dropped (``1,234`` -> ``1234``), punctuation -> spaces, spaces collapsed."""
    text = re.sub(r"(?<=\d)[,_](?=\d{3}\b)", "", text.lower())
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text).split())


def answer_correct(prediction: str, answer: str) -> bool:
    """Whether the normalised ``answer`` occurs in the normalised ``prediction`` (RULER-style substring match)."""
    wanted = normalize(answer)
    return bool(wanted) and wanted in normalize(prediction)
