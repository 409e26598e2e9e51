"""English word lists for the synthetic tasks, read from the ``wonderwords`` package (MIT licence)."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def _read(name: str) -> tuple[str, ...]:
    try:
        files = resources.files("wonderwords.assets")
    except ModuleNotFoundError as error:
        raise ImportError(
            "the needle and RULER tasks need the word lists of wonderwords, part of lavakv's eval extra: "
            "pip install 'lavakv[eval]'"
        ) from error
    text = (files / name).read_text(encoding="utf-8")
    return tuple(w.strip() for w in text.splitlines() if w.strip())


def nouns() -> tuple[str, ...]:
    """wonderwords' nouns."""
    return _read("nounlist.txt")


def adjectives() -> tuple[str, ...]:
    """wonderwords' adjectives."""
    return _read("adjectivelist.txt")


def verbs() -> tuple[str, ...]:
    """wonderwords' verbs."""
    return _read("verblist.txt")


@cache
def all_words() -> tuple[str, ...]:
    """Nouns, adjectives and verbs, deduplicated and sorted (RULER's common-words pool)."""
    return tuple(sorted(set(nouns()) | set(adjectives()) | set(verbs())))
