"""Refusing result sets whose tables could not tell two runs apart.

Tables, aggregates (RULER mean, LongBench summary), paired comparisons and plots name a run by its task, model,
query mode, method label and budget. Two runs that share those but differ in a setting the name does not show (the
observation window, the dtype, the task's lengths or seed, a preset default that changed between versions) would
be shown as one, or averaged together: :func:`check_distinct` refuses such a set instead, naming both directories
and what differs, and :func:`refuse_relabelled` refuses to write such a run next to the other in the first place.
"""

from __future__ import annotations

import json
from functools import reduce
from pathlib import Path
from typing import Any

#: task settings that belong to one sub-task (RULER's generation length, the data file a sub-task reads: essays for
#: niah_single_2, SQuAD for qa_1, none for the synthetic ones), not to the run as a whole
PER_SUBTASK = frozenset({"subtask", "tokens_to_generate", "max_new_tokens", "data"})


def _settings(run: dict[str, Any], whole_task: bool) -> dict[str, Any]:
    """What identifies ``run`` beyond its displayed name: dtype, task settings (without the per-sub-task ones when
    ``whole_task`` is False) and the method's full description."""
    config = run["config"]
    task = dict(config.get("task_settings") or {})
    if not whole_task:
        task = {k: v for k, v in task.items() if k not in PER_SUBTASK}
    return {"dtype": config.get("dtype"), "task_settings": task, "method": config["method"]}


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ (a missing key equals None: a field added later and unused)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))]
    return [] if json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str) else [path]


def check_distinct(runs: list[dict[str, Any]], label, budget) -> None:
    """Raise ValueError when two of ``runs`` (from :func:`lavakv.eval.report.load_run`) would be shown as one.

    ``label(config)`` and ``budget(config)`` give the displayed method and budget. Checked: two runs of one task,
    model, mode, method and budget must have the same settings; the RULER and LongBench sub-task runs one
    aggregate row averages (one family, model, mode, method, budget) must share every setting except the
    sub-task's own (its name, generation length and data file).
    """
    for whole_task in (True, False):
        seen: dict[tuple, dict[str, Any]] = {}
        for run in runs:
            config = run["config"]
            family, _, sub = config["task"].partition("/")
            if not whole_task and not (family in ("ruler", "longbench") and sub):
                continue
            task = config["task"] if whole_task else family
            key = (task, config["model"], config["query_mode"], label(config), budget(config))
            other = seen.setdefault(key, run)
            differ = differences(_settings(other, whole_task), _settings(run, whole_task))
            if differ:
                what = "runs" if whole_task else f"{family} sub-task runs averaged in one row"
                raise ValueError(
                    f"two {what} of {key[3]} at budget {key[4]} on {task} | {key[1]} | {key[2]} differ in "
                    f"{', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''} ({other['directory']}, "
                    f"{run['directory']}); the tables cannot tell them apart: give lavakv report the directories "
                    "of one setting"
                )


def _at(value: Any, path: str) -> Any:
    """The value at a dotted path of :func:`differences` (None where it is missing)."""
    return reduce(lambda d, key: d.get(key) if isinstance(d, dict) else None, path.split("."), value)


def refuse_relabelled(directory: Path, resolved: dict[str, Any]) -> None:
    """Refuse a new run directory (``lavakv eval``) whose label a run of the same task, model and query mode in the
    same ``--out`` already carries with another configuration of the method (a default changed since that run was
    made, or another ``--window``): the tables, ``--against`` and the plots would show two methods under one label.
    ``resolved`` is the new run's config.json content. Raises ValueError naming the settings and the fix."""
    prefix = directory.name.rsplit("__", 1)[0] + "__"  # task, model, label and query mode; the hash left out
    for other in sorted(directory.parent.iterdir()) if directory.parent.is_dir() else []:
        if other == directory or not other.name.startswith(prefix) or not (other / "config.json").is_file():
            continue
        theirs = json.loads((other / "config.json").read_text()).get("method") or {}
        changed = differences(theirs, resolved["method"])
        if changed:
            what = "; ".join(f"{p}: {_at(theirs, p)!r} there, {_at(resolved['method'], p)!r} now" for p in changed)
            raise ValueError(f"{directory.parent}: run {other.name} already has the label {resolved['label']!r} "
                             f"but another configuration of the method ({what}), so one label would name two "
                             "methods (a default changed since that run, or another --window). To keep both, "
                             "pin the setting in the --methods entry (e.g. 'lava[alpha=0]'), which gives the "
                             "new runs their own label; or write to another --out.")
