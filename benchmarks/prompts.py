"""The benchmark prompt: real text (Python standard-library sources, fixed order) tokenized and cut to length.

Both sides of a comparison must see the same token ids: lavakv's side tokenizes, and hands the ids to the
kvpress venv as a file (``save_ids`` / ``load_ids``), so the two transformers versions never tokenize apart.

    python benchmarks/prompts.py --model smollm2-135m --tokens 16384 --out /tmp/ids.pt
"""

from __future__ import annotations

import argparse
import hashlib
import sysconfig
from pathlib import Path

import torch

# Fixed order; plain prose-heavy modules first. Files that are missing on some Python version are skipped, and
# the ids' sha256 is recorded with every result so two runs can tell whether they saw the same prompt.
SOURCES = (
    "argparse.py", "difflib.py", "textwrap.py", "inspect.py", "typing.py", "dataclasses.py", "pathlib.py",
    "subprocess.py", "tarfile.py", "zipfile.py", "logging/__init__.py", "json/decoder.py", "json/encoder.py",
    "email/message.py", "http/client.py", "urllib/parse.py", "collections/__init__.py", "functools.py",
    "enum.py", "statistics.py", "shutil.py", "configparser.py", "threading.py", "unittest/case.py",
)


def prompt_text(min_chars: int = 0) -> tuple[str, list[str]]:
    """Concatenated standard-library sources (at least ``min_chars`` when 0 means all) and the files used."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, used, total = [], [], 0
    for name in SOURCES:
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(f"# file: {name}\n{text}\n")
        used.append(name)
        total += len(parts[-1])
        if min_chars and total >= min_chars:
            break
    return "".join(parts), used


def prompt_ids(tokenizer, tokens: int) -> torch.Tensor:
    """``[1, tokens]`` int64 ids of the benchmark text (raises when the sources are too short)."""
    text, _ = prompt_text(min_chars=6 * tokens)  # ~3-4 characters per token for code; keep a margin
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :tokens]
    if ids.shape[1] < tokens:
        raise ValueError(f"benchmark text gives only {ids.shape[1]} tokens, {tokens} asked; add files to SOURCES")
    return ids


def ids_digest(ids: torch.Tensor) -> str:
    """Short sha256 of the token ids (identifies the prompt across processes and venvs)."""
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def save_ids(ids: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ids": ids.to(torch.int64), "sha256_16": ids_digest(ids)}, path)


def load_ids(path: Path) -> torch.Tensor:
    data = torch.load(path)
    if ids_digest(data["ids"]) != data["sha256_16"]:
        raise ValueError(f"{path}: token ids do not match their recorded digest")
    return data["ids"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from lavakv.models import load_model

    _, tokenizer = load_model(args.model)
    ids = prompt_ids(tokenizer, args.tokens)
    save_ids(ids, args.out)
    print(f"{args.out}: {ids.shape[1]} tokens, sha256 {ids_digest(ids)}")


if __name__ == "__main__":
    main()
