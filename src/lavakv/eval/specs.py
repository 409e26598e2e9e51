"""Method entries of ``lavakv eval --methods``: a preset name, optionally with options in brackets.

    full,lava,lava[alpha=0.2],lava[alpha=0.2,floor=lava-reference],ada-snapkv[alpha=0.1]

An entry ``name[key=value,...]`` becomes ``lavakv.method(name, budget=..., key=value, ...)`` for every budget and
ratio of the evaluation. A value is read by the type of the preset's default for that option (``lavakv methods``):
a number where the default is a number (a whole number where it is an int), ``true`` / ``false`` where it is a
bool, the text as written where it is a string; for an option without a typed default, an int, else a float, else
the text.

Every entry has a *label*: the entry as written, normalised -- no spaces, options sorted by name, numbers in their
shortest form (``alpha=0.20`` and ``alpha=.2`` are ``alpha=0.2``; ``0`` and ``0.0`` are ``0``), booleans lower case.
A preset without options is its own label (``lava``). The label names the method in result directories, configs,
reports and plots, and ``lavakv report --against`` accepts it. In a directory name the label is written
filesystem-safe by :func:`label_slug` (``lava[alpha=0.2,floor=lava-reference]`` -> ``lava+alpha=0.2+floor=lava-
reference``); a preset name without options is written as before, so older result directories still resume.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from lavakv.methods import describe, list_methods

#: options an entry may not set: they come from ``--budgets`` / ``--compression-ratios`` / ``--window``
RESERVED = {"budget": "--budgets", "compression_ratio": "--compression-ratios", "window": "--window"}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VALUE = re.compile(r"[A-Za-z0-9_.+-]+")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_EXAMPLE = "e.g. lava[alpha=0.2] or ada-snapkv[alpha=0.1,floor=exact]"


@dataclass(frozen=True)
class MethodSpec:
    """One parsed ``--methods`` entry.

    Attributes:
        name: the preset.
        params: options for :func:`lavakv.method`, typed.
        label: the normalised entry (see the module docstring).
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""


def split_methods(text: str) -> list[str]:
    """The entries of a ``--methods`` list: split at the commas outside brackets, spaces around entries dropped.
    Unbalanced or nested brackets, or an empty entry -> ValueError naming the list."""
    entries: list[str] = []
    depth, start = 0, 0
    for position, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"--methods {text!r}: nested '[' at character {position + 1}; options are "
                                 f"key=value pairs in one pair of brackets, {_EXAMPLE}")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"--methods {text!r}: ']' without '[' at character {position + 1}; {_EXAMPLE}")
        elif char == "," and depth == 0:
            entries.append(text[start:position].strip())
            start = position + 1
    if depth:
        raise ValueError(f"--methods {text!r}: a '[' is not closed; {_EXAMPLE}")
    entries.append(text[start:].strip())
    if not any(entries):
        return []
    if not all(entries):
        raise ValueError(f"--methods {text!r}: an empty entry (two commas in a row, or one at an end); give "
                         "comma-separated presets, see `lavakv methods`")
    return entries


def _syntax(entry: str) -> tuple[str, list[tuple[str, str]]]:
    """``(name, [(key, raw value), ...])`` of one entry; malformed -> ValueError naming the entry."""
    text = entry.strip()
    name, bracket, rest = text.partition("[")
    name = name.strip()
    if not name:
        raise ValueError(f"--methods entry {entry!r}: no method name before '['; {_EXAMPLE}")
    if not bracket:
        if "]" in text:
            raise ValueError(f"--methods entry {entry!r}: ']' without '['; {_EXAMPLE}")
        return name, []
    inner, closing, tail = rest.partition("]")
    if not closing:
        raise ValueError(f"--methods entry {entry!r}: the '[' is not closed; {_EXAMPLE}")
    if tail.strip():
        raise ValueError(f"--methods entry {entry!r}: {tail.strip()!r} after ']'; the options go inside the "
                         f"brackets, {_EXAMPLE}")
    if "[" in inner:
        raise ValueError(f"--methods entry {entry!r}: nested '['; {_EXAMPLE}")
    if not inner.strip():
        raise ValueError(f"--methods entry {entry!r}: empty brackets; give options as key=value ({_EXAMPLE}) or "
                         f"drop the brackets")
    pairs: list[tuple[str, str]] = []
    for item in inner.split(","):
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not key or not value:
            raise ValueError(f"--methods entry {entry!r}: {item.strip()!r} is not key=value; {_EXAMPLE}")
        if not _KEY.fullmatch(key):
            raise ValueError(f"--methods entry {entry!r}: {key!r} is not an option name (letters, digits, _)")
        if not _VALUE.fullmatch(value):
            raise ValueError(f"--methods entry {entry!r}: value {value!r} of {key} may hold only letters, digits "
                             "and . _ + -")
        if key in (k for k, _ in pairs):
            raise ValueError(f"--methods entry {entry!r}: {key} is given twice")
        pairs.append((key, value))
    return name, pairs


def _number_text(value: int | float) -> str:
    """Shortest text of a number: ``0.2``, ``0`` for 0.0, ``1e-05``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = repr(float(value) + 0.0)
    return text[:-2] if text.endswith(".0") else text


def _untyped(raw: str) -> Any:
    """A value whose option has no typed default: int, else float, else the text."""
    if _INT.fullmatch(raw):
        return int(raw)
    if _FLOAT.fullmatch(raw):
        return float(raw) + 0.0  # -0.0 is 0.0 (one label, one run directory)
    return raw


def _canonical(raw: str) -> str:
    """The label text of a raw value, without type information (numbers shortest, booleans lower case)."""
    if raw.lower() in ("true", "false"):
        return raw.lower()
    value = _untyped(raw)
    return raw if isinstance(value, str) else _number_text(value)


def _label(name: str, pairs: list[tuple[str, str]]) -> str:
    if not pairs:
        return name
    return f"{name}[{','.join(f'{k}={_canonical(v)}' for k, v in sorted(pairs))}]"


def normalise_label(text: str) -> str:
    """The label of a method entry as written (``' lava[ alpha=0.20 ]'`` -> ``'lava[alpha=0.2]'``); a preset name
    is itself. Malformed -> ValueError. Used for ``lavakv report --against``."""
    return _label(*_syntax(text))


def _typed(entry: str, key: str, raw: str, default: Any) -> Any:
    """``raw`` read as the type of ``default``; a mismatch -> ValueError naming the entry and option."""
    if isinstance(default, bool):
        if raw.lower() not in ("true", "false"):
            raise ValueError(f"--methods entry {entry!r}: {key} is true or false, got {raw!r}")
        return raw.lower() == "true"
    if isinstance(default, int):
        if not _INT.fullmatch(raw):
            raise ValueError(f"--methods entry {entry!r}: {key} is a whole number, got {raw!r}")
        return int(raw)
    if isinstance(default, float):
        if not _FLOAT.fullmatch(raw) or not math.isfinite(float(raw)):
            raise ValueError(f"--methods entry {entry!r}: {key} is a number, got {raw!r}")
        return float(raw) + 0.0  # -0.0 is 0.0
    if isinstance(default, str):
        return raw
    return _untyped(raw)


def parse_method(entry: str) -> MethodSpec:
    """One ``--methods`` entry -> :class:`MethodSpec`. An unknown preset, a reserved option (budget, ratio,
    window), options on ``full`` or a value of the wrong type -> ValueError naming the entry and the fix. Unknown
    options are left to :func:`lavakv.method` (a TypeError listing the valid ones)."""
    name, pairs = _syntax(entry)
    if name not in list_methods():
        raise ValueError(f"unknown method {name!r}; choose from: {', '.join(list_methods())}")
    if pairs and name == "full":
        raise ValueError(f"--methods entry {entry!r}: full does not compress and takes no options")
    defaults = describe(name)["params"]
    params: dict[str, Any] = {}
    for key, raw in pairs:
        if key in RESERVED:
            raise ValueError(f"--methods entry {entry!r}: {key} is set for every method by {RESERVED[key]}, not "
                             "per method")
        if key in ("scorer", "layers", "heads"):
            raise ValueError(f"--methods entry {entry!r}: {key} is a component of the preset, not an option; pick "
                             "the preset with that component (`lavakv methods`)")
        params[key] = _typed(entry, key, raw, defaults.get(key))
    return MethodSpec(name, params, _label(name, pairs))


def label_slug(label: str) -> str:
    """A filesystem-safe form of a run label for directory and file names. A label without options is written as
    :func:`slug` has always written it (``lava-b128``); options become ``+key=value``
    (``lava[alpha=0.2]-b128`` -> ``lava+alpha=0.2-b128``), other characters ``-``."""
    name, bracket, rest = label.partition("[")
    if not bracket:
        return slug(label)
    inner, _, tail = rest.partition("]")
    parts = [slug(name)] + [re.sub(r"[^A-Za-z0-9._=+-]+", "-", pair) for pair in inner.split(",")]
    suffix = slug(tail) if tail.strip("-") else ""
    return re.sub(r"_{2,}", "_", "+".join(parts)) + (f"-{suffix}" if suffix else "")


def slug(text: str) -> str:
    """A file-name-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"
