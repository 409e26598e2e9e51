"""Argument helpers shared by the ``lavakv`` subcommands: comma-separated lists, model names, input files, output
directories and the model's context length.

Every check raises ``ValueError`` with one line that names the problem and the fix; the CLI prints it as
``lavakv: error: ...`` (exit code 2). The ones that need no model run before the model loads; :func:`check_fits`
runs right after loading, before any prefill.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

#: ``owner/name`` on the Hugging Face hub (one slash, no leading dot, hub-safe characters).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def parse_csv(text: str | None, convert: Callable[[str], Any], what: str) -> list[Any]:
    """``"a,b"`` -> ``[convert("a"), convert("b")]``; None -> ``[]``; empty or unconvertible -> ValueError."""
    if text is None:
        return []
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{what} is empty: give a comma-separated list")
    try:
        return [convert(item) for item in items]
    except ValueError:
        raise ValueError(f"{what} must be a comma-separated list of {convert.__name__}s, got {text!r}") from None


def check_threads(threads: int | None) -> None:
    """Reject ``--threads`` below 1 (None, torch's own choice, passes)."""
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads} (leave it out for torch's choice)")


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count to ``threads`` (checked by :func:`check_threads`); None leaves it alone."""
    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a known name or a hub id ``owner/name``."""
    if name.startswith((".", "~", "/", os.sep)) or (os.altsep and os.altsep in name) or "\\" in name:
        return True
    if name.endswith(".gguf") or name.count("/") > 1 or "/" in name and not _HUB_ID.fullmatch(name):
        return True
    # "models/foo" where ./models exists is a local path that is missing, not a hub id
    return "/" in name and Path(name.split("/", 1)[0]).is_dir()


def check_model_request(name: str, device: str, known: Sequence[str]) -> str:
    """Reject an unknown model name, a missing local path or an unavailable CUDA device; returns what to load
    (``name``, with ``~`` expanded for local paths).

    ``name`` is a known name, a local model directory or ``.gguf`` file, or a hub id ``owner/name``. Something that
    looks like a path (starts with ``.``, ``~`` or ``/``, has a backslash or several slashes, ends with ``.gguf``,
    or starts with a directory that exists here) and does not exist is reported as missing, not as a hub id.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type == "meta":
        raise ValueError("--device meta holds no weights, so nothing can run on it; use cpu, cuda or cuda:N")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu")
    if not name.strip():
        raise ValueError("--model is empty; give one of: " + ", ".join(known)
                         + " (or a local model directory, a .gguf file, or a Hugging Face hub id owner/name)")
    if name in known:
        return name
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() or path.suffix == ".gguf":
            return str(path)
        raise ValueError(f"--model {name}: is a file, not a model directory or a .gguf file; give the directory "
                         "holding config.json, a .gguf file, a hub id owner/name, or one of: " + ", ".join(known))
    if _looks_like_path(name):
        kind = "file" if name.endswith(".gguf") else "directory"
        raise ValueError(f"--model: no such {kind}: {name}; check the path (or use one of: {', '.join(known)})")
    if "/" not in name:
        raise ValueError(
            f"unknown model {name!r}; known names: {', '.join(known)} (or a local model directory, a .gguf file, "
            f"or a Hugging Face hub id owner/name)"
        )
    return name  # a hub id


def read_text_file(path: str | os.PathLike, what: str, empty_fix: str) -> str:
    """The text of a UTF-8 file named by an option; missing, unreadable, binary, non-UTF-8 or empty ->
    ValueError naming the file (``what``, e.g. ``"context file"``) and the fix (``empty_fix`` for an empty one)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist (or is not a file)")
    try:
        data = file.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {what} {str(path)!r}: {error.strerror or error}; check its permissions"
                         ) from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ValueError(f"{what} {str(path)!r} is UTF-16 text, not UTF-8; convert it with "
                         f"`iconv -f UTF-16 -t UTF-8 {path} > out.txt` and pass that file")
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    nul = data.find(b"\x00", skip)
    if nul >= 0:
        raise ValueError(f"{what} {str(path)!r} is a binary file, not text (NUL byte at offset {nul}); pass a "
                         "UTF-8 text file")
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = skip + error.start
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}); "
                         f"convert it with iconv (e.g. `iconv -f latin1 -t UTF-8 {path} > out.txt`) or pass a "
                         "UTF-8 file") from None
    if not text.strip():
        raise ValueError(f"{what} {str(path)!r} is empty: {empty_fix}")
    return text


def check_out_dir(path: str | os.PathLike, flag: str = "--out", files: Iterable[str] = ()) -> Path:
    """Check that directory ``path`` exists and is writable, or can be created; ``files`` (names in it that will be
    written) must not be directories or read-only. Creates nothing; returns ``path`` with ``~`` expanded."""
    out = Path(path).expanduser()
    fix = f"give {flag} a directory you can write to"
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{flag} {path}: is a file, not a directory; {fix} (it is created if missing)")
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: the directory is not writable; {fix}")
        for name in files:
            target = out / name
            if target.is_dir():
                raise ValueError(f"{flag} {path}: {target} is a directory, so the results cannot be written there; "
                                 f"remove it or {fix}")
            if target.exists() and not os.access(target, os.W_OK):
                raise ValueError(f"{flag} {path}: {target} is not writable; remove it or {fix}")
        return out
    if out.is_symlink():
        raise ValueError(f"{flag} {path}: is a broken symbolic link; remove it or {fix}")
    absolute = Path(os.path.abspath(out))
    ancestor = next(p for p in absolute.parents if p.exists() or p.is_symlink())
    if not ancestor.is_dir():
        raise ValueError(f"{flag} {path}: cannot be created because {ancestor} is not a directory; {fix}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot be created because {ancestor} is not writable; {fix}")
    return out


def context_length(model) -> int | None:
    """The model's context length (``max_position_embeddings`` of its config or of its text config), or None."""
    config = getattr(model, "config", None)
    candidates = [config]
    get_text_config = getattr(config, "get_text_config", None)
    if callable(get_text_config):
        try:
            candidates.append(get_text_config())
        except Exception:  # noqa: BLE001 - a config without a text part: nothing more to look at
            pass
    candidates.append(getattr(config, "text_config", None))
    for candidate in candidates:
        value = getattr(candidate, "max_position_embeddings", None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_fits(model, prompt_tokens: int, new_tokens: int, *, prompt: str, new: str, fix: str) -> None:
    """Reject ``prompt_tokens + new_tokens`` positions beyond the model's context length.

    ``prompt`` and ``new`` say what the two numbers are (e.g. ``"the prompt"``, ``"--max-new-tokens"``); ``fix``
    says what to change. Models whose config gives no context length are not checked.
    """
    limit = context_length(model)
    if limit is None or prompt_tokens + new_tokens <= limit:
        return
    raise ValueError(
        f"{prompt} is {prompt_tokens} tokens and {new} adds {new_tokens}: {prompt_tokens + new_tokens} > the model's "
        f"context length of {limit} tokens (max_position_embeddings); {fix}"
    )
