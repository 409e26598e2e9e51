"""Real Python source text for the code and fidelity tasks: the files of the installed standard library."""

from __future__ import annotations

import sysconfig
from functools import cache
from pathlib import Path

_SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@cache
def stdlib_files(min_bytes: int = 8192) -> tuple[Path, ...]:
    """The standard library's ``.py`` files of at least ``min_bytes``, sorted (tests and site-packages left out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p for p in root.rglob("*.py")
        if not (_SKIP_PARTS & set(p.relative_to(root).parts)) and p.is_file() and p.stat().st_size >= min_bytes
    ]
    if not files:
        raise ValueError(f"no Python files of {min_bytes} bytes or more under the standard library at {root}")
    return tuple(sorted(files))


def stdlib_root() -> Path:
    """Where the standard library is installed."""
    return Path(sysconfig.get_paths()["stdlib"])


def read_source(path: Path) -> str:
    """A source file's text (UTF-8, undecodable bytes replaced)."""
    return path.read_text(encoding="utf-8", errors="replace")
