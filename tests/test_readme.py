"""The README's Python examples run as written, and its links stay inside the repository.

Every ```python block of README.md is executed in order in one namespace (later blocks use what earlier ones
defined), on a tiny random Llama with a character-level chat tokenizer: ``lavakv.load_model`` is monkeypatched to
return it whatever name the README asks for, so the examples run offline and fast. The README text itself is never
edited here.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from conftest import char_tokenizer, tiny_model

import lavakv
import lavakv.models

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))

FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
FENCED_ANY = re.compile(r"^```.*?^```[ \t]*$", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first code line number, code)`` of every ```python fenced block of ``text`` (1-based line numbers)."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


@pytest.fixture
def tiny_loader(monkeypatch):
    """Make ``lavakv.load_model`` return a tiny chat-capable (model, tokenizer); returns the names asked for."""
    asked: list[str] = []
    tokenizer = char_tokenizer(chat=True)
    model = tiny_model("llama", vocab=len(tokenizer))

    def fake_load_model(name_or_path, **kwargs):
        asked.append(name_or_path)
        return model, tokenizer

    assert hasattr(lavakv, "load_model"), "lavakv must export load_model (from lavakv.models import load_model)"
    monkeypatch.setattr(lavakv, "load_model", fake_load_model)
    monkeypatch.setattr(lavakv.models, "load_model", fake_load_model)
    return asked


def test_readme_has_python_examples():
    assert python_blocks(README.read_text(encoding="utf-8")), "README.md has no ```python block"


def test_readme_python_blocks_run(tiny_loader, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write files (a saved context) into the working directory
    text = README.read_text(encoding="utf-8")
    namespace: dict = {"__name__": "__readme__"}
    for line, code in python_blocks(text):
        # padded with newlines so that a traceback points at the README line that failed
        compiled = compile("\n" * (line - 1) + code, str(README), "exec")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compiled, namespace)
    assert all(name in lavakv.models.MODELS for name in tiny_loader), tiny_loader


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_point_inside_the_repository(path):
    """Relative links resolve to files of this repository; the README links nowhere else (papers are cited in docs)."""
    text = path.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            assert path != README, f"README.md links outside the repository: {target}"
            assert target.startswith("https://"), f"{path.name}: unexpected link {target}"
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        assert resolved.is_relative_to(REPO), f"{path.name}: link {target} leaves the repository"
        assert resolved.exists(), f"{path.name}: link {target} points at a missing file"
        if anchor and resolved.suffix == ".md":
            assert anchor in heading_anchors(resolved.read_text(encoding="utf-8")), f"{path.name}: no #{anchor}"


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of ``markdown``: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCED_ANY.sub("", markdown)
    titles = re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", title.replace("`", "").lower()).replace(" ", "-") for title in titles}
