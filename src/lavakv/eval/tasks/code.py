"""Next-line code completion on real Python files of the installed standard library (LongBench lcc style).

Sample ``i`` picks, with a generator seeded from the run seed and ``i``, a file (of 8 KB or more) and a cut line
that is code: not blank, not a comment, no ``#``, backtick or ``//`` (LongBench's ``code_sim`` skips such lines
in the prediction, so they could never match), not inside a multi-line string (docstring prose) and not a
statement that is only a string literal (a one-line docstring). The prompt is LongBench's lcc template over the
lines before the cut, keeping the END of the file when it exceeds the length cap (whole lines dropped from the
start until it fits); no chat template (LongBench's rule for lcc). Score: ``code_sim`` (0-100) of the first
generated code line against the true line, both stripped of surrounding whitespace.
"""

from __future__ import annotations

import io
import random
import tokenize
from typing import Any

from lavakv.eval.metrics import code_sim, first_code_line
from lavakv.eval.tasks.base import Sample, Task, TaskOptions, resolve
from lavakv.eval.tasks.sources import read_source, stdlib_files, stdlib_root
from lavakv.generation import count_tokens

DEFAULT_LENGTHS = [4096]
INSTRUCTION = "Please complete the code given below. \n"  # LongBench lcc: "...below. \n{context}Next line of code:\n"
QUERY = "Next line of code:\n"
MIN_CONTEXT_LINES = 20


def eligible_line(line: str) -> bool:
    """Whether a line may be the completion target: code, not blank, no comment / fence / ``//`` marker."""
    stripped = line.strip()
    return bool(stripped) and not any(mark in line for mark in ("#", "`", "//"))


def string_lines(source: str) -> set[int]:
    """0-based indices of the lines of ``source`` that lie in a multi-line string literal (docstrings and other
    triple-quoted text; the line that opens it included) or hold a statement that is only a string literal.

    Source that does not tokenize gives an empty set (only :func:`eligible_line` then applies).
    """
    out: set[int] = set()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return out
    for i, token in enumerate(tokens):
        if token.type != tokenize.STRING:
            continue
        (first, _), (last, _) = token.start, token.end
        if last > first:
            out.update(range(first - 1, last))
        before = tokens[i - 1].type if i else tokenize.NEWLINE
        after = tokens[i + 1].type if i + 1 < len(tokens) else tokenize.NEWLINE
        if before in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT) and after in (
                tokenize.NEWLINE, tokenize.ENDMARKER):
            out.add(first - 1)  # a string statement on its own
    return out


class CodeTask(Task):
    """lcc-style next-line completion; headline score ``code_sim``."""

    name = "code"
    score_name = "code_sim"

    def __init__(self, tokenizer, options: TaskOptions) -> None:
        super().__init__(tokenizer, options)
        self.lengths = resolve(options.lengths, DEFAULT_LENGTHS)
        self.repeats = resolve(options.samples, 50)
        self.max_new_tokens = resolve(options.max_new_tokens, 64)  # LongBench's lcc generation length
        for length in self.lengths:
            if length < 64:
                raise ValueError(f"code: context cap {length} tokens is too small (use >= 64)")

    def __len__(self) -> int:
        return len(self.lengths) * self.repeats

    def settings(self) -> dict[str, Any]:
        return {"lengths": self.lengths, "samples_per_length": self.repeats, "seed": self.options.seed,
                "max_new_tokens": self.max_new_tokens, "source": f"standard library at {stdlib_root()}",
                "files": len(stdlib_files()), "cut_line": "code outside string literals"}

    def sample(self, index: int) -> Sample:
        cap = self.lengths[index // self.repeats]
        rng = random.Random(f"{self.sample_seed(*divmod(index, self.repeats))}:code")
        files = stdlib_files()
        for _ in range(100):
            path = files[rng.randrange(len(files))]
            source = read_source(path)
            lines = source.split("\n")
            strings = string_lines(source)
            candidates = [i for i in range(MIN_CONTEXT_LINES, len(lines))
                          if eligible_line(lines[i]) and i not in strings]
            if candidates:
                break
        else:  # pragma: no cover - the standard library always has such files
            raise ValueError("code: found no file with a usable cut line")
        cut = rng.choice(candidates)

        def code_from(start: int) -> str:
            return "\n".join(lines[start:cut]) + "\n"

        lo, hi = 0, cut - 1  # smallest start line whose context fits the cap
        while lo < hi:
            mid = (lo + hi) // 2
            if count_tokens(self.tokenizer, INSTRUCTION + code_from(mid)) <= cap:
                hi = mid
            else:
                lo = mid + 1
        code = code_from(lo)
        return Sample(
            id=self.sample_id(index), context=INSTRUCTION + code, query=QUERY, answer_prefix="",
            references=[lines[cut].strip()], max_new_tokens=self.max_new_tokens, chat=False,
            meta={"length": cap, "file": str(path.relative_to(stdlib_root())), "line": cut + 1,
                  "context_lines": cut - lo},
        )

    def score(self, sample: Sample, prediction: str) -> dict[str, float]:
        return {"code_sim": code_sim(first_code_line(prediction).strip(), sample.references[0])}
