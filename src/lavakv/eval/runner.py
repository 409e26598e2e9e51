"""The evaluation runner: every task x method x budget, one exact prefill per sample, resumable result directories.

For each task, each (method, budget or ratio) is a *run* with its own directory under ``out``::

    <task>__<model>__<method>-<b64|r0.5|full>__<query-aware|query-agnostic>__<config hash>/

(``<method>`` is the method's label, :mod:`lavakv.eval.specs`: ``lava``, or ``lava+alpha=0.2`` for the entry
``lava[alpha=0.2]``.)
        config.json         resolved config (task generator settings, method components, mode, model, dtype)
        provenance.json     package version + git commit, torch / transformers, model + sha256, dtype, attention
                            implementation, seeds, start time; wall time added as runs progress and finish
        predictions.jsonl   one record per sample, appended (and flushed) as soon as it is scored
        metrics.json        written when every sample asked for is done (lists their ids; a run whose metrics
                            list exactly the samples asked for is finished)

The directory name is deterministic (the hash covers everything that decides the numbers except how many samples
are drawn), so a re-run finds finished runs and skips them, and resumes unfinished ones at the samples their
predictions lack: an interrupted run loses no finished sample, and a re-run with a larger ``--samples`` only
computes the new samples (records are matched by sample id; sample ids must be unique). A re-run with fewer
samples reports metrics over those alone but leaves the larger ``metrics.json`` in place; a resumed run appends the
session (git commit, versions, time) to its provenance. For each sample still missing somewhere, ONE
``session.prefill`` fills a compressed cache for every pending run (prefill attention is exact, so each cache
equals a separate run's), then each cache is decoded greedily on its own, the question fed through it first when
query-agnostic. Prompt encoding, stop ids and decoding are :mod:`lavakv.generation`'s, as ``lavakv generate`` uses.

Spread over processes (``torchrun``; :class:`Shard`, from the ``RANK`` / ``WORLD_SIZE`` environment): rank ``r`` of
``W`` takes the samples whose task index ``i`` has ``i % W == r`` and appends their records to its own shard,
``predictions.rank<r>.jsonl``, in each run directory. No collective communication is needed: the shards are
disjoint, a rank that has done its share checks, under a short lock on ``<out>/.lavakv-eval.state.lock``, whether
every sample asked for has a record in some shard (or in ``predictions.jsonl``), and the rank that finds a run
complete -- the last one to finish it -- merges the shards into ``predictions.jsonl`` (kept records first, shard
records in task order), removes them and writes ``metrics.json``. A sample recorded in any shard or in
``predictions.jsonl`` counts as done, so a rerun, with any number of processes, resumes an interrupted one; a
single-process run merges the shards a distributed one left.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lavakv.eval.distinct import refuse_relabelled
from lavakv.eval.filling import decode_caches, fill_caches
from lavakv.eval.provenance import collect, now
from lavakv.eval.specs import label_slug, parse_method, slug
from lavakv.eval.tasks import Task, TaskOptions, build_tasks
from lavakv.eval.tasks.base import Sample
from lavakv.generation import decode_text, stop_ids
from lavakv.methods import Method, list_methods
from lavakv.methods import method as make_method

logger = logging.getLogger("lavakv")

CONFIG = "config.json"
PROVENANCE = "provenance.json"
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
SHARD_PATTERN = "predictions.rank*.jsonl"
STATE_LOCK = ".lavakv-eval.state.lock"
TIMING_KEYS = ("prefill_seconds", "decode_seconds")  # the only record fields that differ between identical reruns
UNHASHED = ("method_label",)  # config.json keys the directory hash leaves out (the run label already covers them)
#: the method fields of the first result directories; a field added later (decode_budget, decode_interval,
#: chunk_size, ...) is left out of the hash while off (None), so runs written before it existed keep their
#: directory (and resume) when it is not used
FIRST_METHOD_FIELDS = ("name", "scorer", "layers", "heads", "budget", "compression_ratio", "window", "params")


@dataclass(frozen=True)
class Shard:
    """This process's share of an evaluation spread over ``world_size`` processes (``torchrun``).

    Attributes:
        rank: this process's number, ``0 <= rank < world_size`` (``RANK``).
        world_size: how many processes share the samples (``WORLD_SIZE``); 1: a single process does everything.
        local_rank: its number on this machine (``LOCAL_RANK``), which picks its GPU.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"bad process share: RANK={self.rank}, WORLD_SIZE={self.world_size}, "
                             f"LOCAL_RANK={self.local_rank} (need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0)")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, index: int) -> bool:
        """Whether sample ``index`` (its position in the task) is this process's."""
        return index % self.world_size == self.rank

    @property
    def predictions(self) -> str:
        """The predictions file this process appends to: ``predictions.jsonl`` alone, else its shard."""
        return shard_name(self.rank) if self.distributed else PREDICTIONS


def shard_name(rank: int) -> str:
    """The predictions shard of rank ``rank``."""
    return f"predictions.rank{rank}.jsonl"


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard:
    """The :class:`Shard` that ``torchrun`` gives this process through ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``
    (a single process when none is set); a value that is not a whole number, or a missing RANK -> ValueError."""
    environ = os.environ if environ is None else environ
    values: dict[str, int] = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = environ.get(name)
        if raw is None or raw == "":
            continue
        try:
            values[name] = int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not a whole number; launch with torchrun, "
                             "which sets RANK, WORLD_SIZE and LOCAL_RANK, or unset it") from None
    world = values.get("WORLD_SIZE", 1)
    if world > 1 and "RANK" not in values:
        raise ValueError(f"WORLD_SIZE={world} but RANK is not set; launch with torchrun, which sets both, or unset "
                         "WORLD_SIZE")
    rank = values.get("RANK", 0)
    return Shard(rank=rank, world_size=world, local_rank=values.get("LOCAL_RANK", rank))


@dataclass
class EvalConfig:
    """What ``lavakv eval`` runs.

    Attributes:
        task: task spec (see :mod:`lavakv.eval.tasks`), e.g. ``"needle"``, ``"ruler"``, ``"longbench:lcc"``.
        methods: ``--methods`` entries: preset names, optionally with options (``lava[alpha=0.2]``, see
            :mod:`lavakv.eval.specs`); ``full`` runs once, every other entry once per budget and per ratio.
        budgets: tokens per KV head (window included).
        compression_ratios: fractions of the prompt entries removed.
        query_agnostic: compress the context alone, then feed the question (else the whole prompt is compressed).
        window: observation window of every method.
        out: the results root.
        options: task settings (lengths, samples, seed, ...).
    """

    task: str
    methods: list[str]
    budgets: list[int] = field(default_factory=list)
    compression_ratios: list[float] = field(default_factory=list)
    query_agnostic: bool = False
    window: int = 32
    out: str | Path = "eval_out"
    options: TaskOptions = field(default_factory=TaskOptions)


@dataclass(frozen=True)
class Run:
    """One method at one budget (or ratio).

    Attributes:
        method: the configured method.
        method_label: its ``--methods`` label (``lava``, ``lava[alpha=0.2]``); the preset name when not given.
    """

    method: Method
    method_label: str = ""

    @property
    def name(self) -> str:
        """The method's label, without the budget."""
        return self.method_label or self.method.name

    @property
    def label(self) -> str:
        """The run's label: the method's label and the budget (``lava[alpha=0.2]-b128``) or ratio."""
        m = self.method
        if m.budget is not None:
            return f"{self.name}-b{m.budget}"
        if m.compression_ratio is not None:
            return f"{self.name}-r{m.compression_ratio:g}"
        return self.name


@dataclass
class RunResult:
    """What happened to one run directory in :func:`run_eval`."""

    directory: Path
    task: str
    label: str
    status: str  # "finished" (this call), "skipped" (finished before), "partial" (other ranks still owe samples)
    metrics: dict[str, Any] | None


def plan_runs(config: EvalConfig) -> list[Run]:
    """The runs of ``config``, validated: an unknown method or option, a malformed entry, a missing or bad budget,
    or two entries that are the same method (``lava`` and ``lava[alpha=0.2]`` while 0.2 is lava's default) ->
    ValueError naming the entry and the fix."""
    if not config.methods:
        raise ValueError(f"--methods is empty; choose from: {', '.join(list_methods())}")
    runs: list[Run] = []
    seen: dict[str, str] = {}  # resolved method -> the label that gave it
    for entry in config.methods:
        spec = parse_method(entry)
        if spec.name == "full":
            planned = [Run(make_method("full"), spec.label)]
        else:
            if not config.budgets and not config.compression_ratios:
                raise ValueError(f"method {spec.label!r} needs --budgets or --compression-ratios")
            sizes = [{"budget": b} for b in config.budgets]
            sizes += [{"compression_ratio": r} for r in config.compression_ratios]
            try:
                planned = [Run(make_method(spec.name, window=config.window, **size, **spec.params), spec.label)
                           for size in sizes]
            except (TypeError, ValueError) as error:  # an option the components lack, a bad value, a bad budget
                if not spec.params:
                    raise
                raise ValueError(f"--methods entry {entry.strip()!r}: {error}") from None
        identity = json.dumps(planned[0].method.describe() | {"name": None}, sort_keys=True, default=str)
        if identity in seen and seen[identity] != spec.label:
            raise ValueError(f"--methods: {seen[identity]!r} and {spec.label!r} are the same method (every option "
                             "equal, defaults included); list it once")
        seen.setdefault(identity, spec.label)
        runs += planned
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate runs in --methods / --budgets: {', '.join(labels)}")
    return runs


def run_config(task: Task, run: Run, config: EvalConfig, model, model_id: str) -> dict[str, Any]:
    """The resolved config of one run (also what its directory hash covers)."""
    parameter = next(model.parameters())
    return {
        "task": task.name,
        "task_settings": task.identity(),
        "model": model_id,
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "method": run.method.describe(),
        "method_label": run.name,
        "label": run.label,
        "query_mode": "query-agnostic" if agnostic_for(task, config) else "query-aware",
        "decoding": "greedy",
    }


def agnostic_for(task: Task, config: EvalConfig) -> bool:
    """Whether ``task`` runs query-agnostic: only tasks with a question can (fidelity has none: it always
    compresses its whole prompt)."""
    return config.query_agnostic and task.has_question


def run_directory(out: Path, resolved: dict[str, Any]) -> Path:
    """Deterministic directory of a run: readable parts plus a hash of its resolved config."""
    hashed = {k: v for k, v in resolved.items() if k not in UNHASHED}
    if isinstance(hashed.get("method"), dict):
        hashed["method"] = {k: v for k, v in hashed["method"].items()
                            if k in FIRST_METHOD_FIELDS or v is not None}
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:10]
    name = "__".join([slug(resolved["task"]), slug(resolved["model"]), label_slug(resolved["label"]),
                      resolved["query_mode"], digest])
    return out / name


def damaged_file(path: Path, problem: str) -> ValueError:
    """The error for a results file lavakv cannot read: names the file, the problem and the fix."""
    return ValueError(f"{path}: damaged results file ({problem}); fix or delete it, or delete the run directory "
                      f"{path.parent} and rerun `lavakv eval` to redo that run")


def parse_records(path: Path, text: str) -> tuple[list[dict[str, Any]], bool]:
    """The prediction records in ``text`` (the content of ``path``), and whether its last line was torn.

    A torn last line (not JSON: a record being written by another process, or an interrupted write) is left out.
    Any earlier line that is not a JSON object with an ``id`` -> ValueError naming the file, the line and the fix.
    """
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                return records, True
            raise damaged_file(path, f"line {number} is not JSON: {error.msg}") from None
        if not isinstance(record, dict) or "id" not in record:
            raise damaged_file(path, f"line {number} is not a prediction record (a JSON object with an 'id')")
        records.append(record)
    return records, False


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The records of this process's predictions file; a torn last line is dropped and the file repaired."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    records, torn = parse_records(path, text)
    if torn:
        logger.warning("%s: dropping a torn last line (interrupted write)", path)
    if torn or (text and not text.endswith("\n")):  # also end a whole last record whose newline was not written
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def peek_predictions(path: Path) -> list[dict[str, Any]]:
    """The records of a predictions file another process may be appending to, read without changing it."""
    try:
        return parse_records(path, path.read_text(encoding="utf-8"))[0]
    except FileNotFoundError:  # absent, or a shard merged away meanwhile
        return []


def shard_files(directory: Path) -> list[Path]:
    """The predictions shards of a run directory, by rank."""
    def rank(path: Path) -> int:
        digits = path.name.removeprefix("predictions.rank").removesuffix(".jsonl")
        return int(digits) if digits.isdigit() else -1

    return sorted((p for p in directory.glob(SHARD_PATTERN) if rank(p) >= 0), key=rank)


def prediction_files(directory: Path) -> list[Path]:
    """Every file of a run directory that holds prediction records: ``predictions.jsonl``, then the shards."""
    return [directory / PREDICTIONS, *shard_files(directory)]


def load_records(directory: Path, own: str | None = None) -> list[dict[str, Any]]:
    """The prediction records of a run directory, from ``predictions.jsonl`` and every shard (the first record of
    an id wins). The file named ``own`` (this process's) is read by :func:`read_predictions`, which repairs a torn
    last line; the others are only read (another process may be appending to them)."""
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in prediction_files(directory):
        for record in read_predictions(path) if path.name == own else peek_predictions(path):
            if record["id"] not in seen:
                seen.add(record["id"])
                records.append(record)
    return records


def merge_shards(directory: Path) -> bool:
    """Fold the shards of a run directory into ``predictions.jsonl`` (its records first, then the shards' records
    not in it, in task order; one record per id) and remove them; False when there was no shard. The new
    ``predictions.jsonl`` replaces the old one atomically before any shard is removed, so a crash loses nothing."""
    shards = shard_files(directory)
    if not shards:
        return False
    kept = peek_predictions(directory / PREDICTIONS)
    seen = {r["id"] for r in kept}
    added: list[dict[str, Any]] = []
    for shard in shards:
        for record in peek_predictions(shard):
            if record["id"] not in seen:
                seen.add(record["id"])
                added.append(record)
    added.sort(key=lambda r: (r.get("index", 0), r["id"]))
    path = directory / PREDICTIONS
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, default=_json_default) + "\n" for r in kept + added)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    for shard in shards:
        shard.unlink(missing_ok=True)
    return True


@contextmanager
def state_lock(out: Path, shard: Shard) -> Iterator[None]:
    """Serialise the short read-modify-write steps on run directories between the processes of one distributed
    evaluation (reading what is done, provenance, merging): a blocking ``flock`` on ``<out>/.lavakv-eval.state.lock``.
    A single process needs none (the eval lock keeps other evaluations out)."""
    if not shard.distributed:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no locking
        yield
        return
    fd = os.open(out / STATE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and push it to disk."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=_json_default) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (temp file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    tmp.replace(path)


@dataclass
class _RunState:
    run: Run
    directory: Path
    done: set[str]  # ids of the samples with a record (the config hash and the id fix each sample's content)
    records: list[dict[str, Any]]


# -- one sample ----------------------------------------------------------------------------------------------------
def evaluate_sample(model, tokenizer, session, task: Task, sample: Sample, methods: list[Method],
                    query_agnostic: bool) -> list[dict[str, Any]]:
    """Records of every method on ``sample``: one shared exact prefill, then greedy decoding of every cache in one
    batch (:func:`~lavakv.eval.filling.decode_caches`; ``decode_seconds`` is that batch's time, the same in each
    record, and ``decoded_together`` how many caches it held).

    Methods that cannot share it are filled on their own: a chunked one (``chunk_size``) by its own chunked prefill,
    a reconstruction scorer's (kvzip) by :meth:`~lavakv.Session.compress_context` over all but the last prompt
    token, which is then fed through the compressed cache (it gives the first logits; the last position is in every
    method's window, so nothing changes but where it is computed)."""
    if not task.generates:
        return task.evaluate(model, session, sample, methods, query_agnostic)
    ids = sample.prompt_ids(tokenizer)
    agnostic = query_agnostic and bool(ids.rest)
    prefix = ids.context if agnostic else ids.whole
    if not prefix:
        raise ValueError(f"{task.name} sample {sample.id}: empty prompt")
    device = next(model.parameters()).device
    x = torch.tensor([prefix], device=device)  # [1, n]
    stops = stop_ids(model, tokenizer)
    for text in sample.extra_stops:
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if encoded:
            stops.add(int(encoded[-1]))
    filled = fill_caches(session, tokenizer, x, methods)
    states, lasts = [], []
    for cache, logits, _ in filled:
        stats = session.stats(cache)  # right after the compressed prefill
        last = logits
        if agnostic:
            last = session.extend(cache, torch.tensor([ids.rest], device=device)).logits[:, -1]
        states.append((stats, cache.resident_kv_bytes()))  # when decoding starts (the question included when fed after)
        lasts.append(last)
    start = time.perf_counter()
    answers, batch = decode_caches(model, session, [c for c, _, _ in filled], logits=lasts,
                                   max_new_tokens=sample.max_new_tokens, stops=stops)
    decode_seconds = time.perf_counter() - start
    records = []
    for (_, _, prefill_seconds), (stats, resident), decoded in zip(filled, states, answers, strict=True):
        prediction = decode_text(tokenizer, decoded.tokens)
        records.append({
            "prediction": prediction,
            "scores": task.score(sample, prediction),
            "prompt_tokens": len(ids.context) + len(ids.rest) if agnostic else len(ids.whole),
            "compressed_tokens": len(prefix),
            "kept_entries": stats.kept_entries,
            "resident_kv_bytes": stats.resident_kv_bytes,
            "resident_kv_bytes_at_decode": resident,
            "uncompressed_kv_bytes": stats.uncompressed_kv_bytes,
            "new_tokens": len(decoded.tokens),
            "stopped": decoded.stopped,
            "prefill_seconds": prefill_seconds,
            "decode_seconds": decode_seconds,
            "decoded_together": batch,
            "query_mode": "query-agnostic" if agnostic else "query-aware",
        })
    return records


# -- the runner ----------------------------------------------------------------------------------------------------
def run_eval(model, tokenizer, config: EvalConfig, *, model_id: str, progress: bool = True,
             shard: Shard | None = None) -> list[RunResult]:
    """Run (or resume) every run of ``config``; returns one :class:`RunResult` per run directory.

    Args:
        model: a supported causal LM (``eval()`` mode); tokenizer: its tokenizer.
        config: what to run.
        model_id: the model's name or path, as recorded and used in directory names.
        progress: show a progress bar with ETA on stderr (rank 0 only when distributed).
        shard: this process's share when the evaluation is spread over processes (:func:`shard_from_env`); None:
            a single process does every sample. A rank's run is ``"finished"`` when it merged it (it was the last
            to finish it), ``"partial"`` while other ranks still owe samples.
    """
    from tqdm.auto import tqdm

    shard = shard or Shard()
    runs = plan_runs(config)  # validate before any work
    tasks = build_tasks(config.task, tokenizer, config.options)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in tasks:  # before any work: a label that would name two methods
        for run in runs:
            resolved = run_config(task, run, config, model, model_id)
            if not (directory := run_directory(out, resolved)).exists():
                refuse_relabelled(directory, resolved)
    torch.manual_seed(config.options.seed)
    attn_implementation = model.config._attn_implementation
    results: list[RunResult] = []
    full = make_method("full")
    session_record = collect(model, model_id, seed=config.options.seed, attn_implementation=attn_implementation)
    session_record["attention_route"] = "lavakv attention function (exact SDPA prefill; kept entries after)"
    if shard.distributed:
        session_record["world_size"] = shard.world_size
    later_session = {k: session_record.get(k) for k in ("lavakv_version", "git", "torch", "transformers",
                                                         "model_sha256", "started_at", "world_size", "threads",
                                                         "device", "dtype", "attn_implementation", "platform")
                     if k in session_record}
    with torch.no_grad(), full.attach(model) as session:
        for task in tasks:
            if config.query_agnostic and not task.has_question:
                logger.warning("%s has no question to feed after compression: it runs query-aware", task.name)
            ids = [task.sample_id(i) for i in range(len(task))]
            if len(set(ids)) != len(ids):
                repeated = sorted({i for i in ids if ids.count(i) > 1})
                raise ValueError(f"{task.name}: samples {', '.join(repeated[:5])} occur more than once; remove "
                                 "repeated --lengths / --depths values (LongBench: records with the same _id)")
            states: list[_RunState] = []
            with state_lock(out, shard):
                for run in runs:
                    resolved = run_config(task, run, config, model, model_id)
                    directory = run_directory(out, resolved)
                    finished = _finished_metrics(directory, ids)
                    if finished is not None:
                        logger.info("%s %s: finished before, skipped (%s)", task.name, run.label, directory)
                        results.append(RunResult(directory, task.name, run.label, "skipped", finished))
                        continue
                    directory.mkdir(parents=True, exist_ok=True)
                    if not (directory / CONFIG).exists():
                        write_json(directory / CONFIG, resolved)
                    records = load_records(directory, own=shard.predictions)
                    done = {r["id"] for r in records}
                    if not (directory / PROVENANCE).exists():
                        write_json(directory / PROVENANCE, {**session_record, "wall_seconds": 0.0})
                    elif not done.issuperset(ids) and shard.rank == 0:  # resumed or extended: log this session too
                        provenance = json.loads((directory / PROVENANCE).read_text())
                        provenance.setdefault("later_sessions", []).append(later_session)
                        write_json(directory / PROVENANCE, provenance)
                    states.append(_RunState(run, directory, done, records))
            if not states:
                continue
            todo = [i for i in range(len(task)) if shard.owns(i) and any(ids[i] not in s.done for s in states)]
            started = time.perf_counter()
            try:
                desc = task.name if not shard.distributed else f"{task.name} [rank {shard.rank}/{shard.world_size}]"
                bar = tqdm(todo, desc=desc, unit="sample", disable=not progress or shard.rank != 0, file=sys.stderr)
                for index in bar:
                    sample = task.sample(index)
                    pending = [s for s in states if sample.id not in s.done]
                    outcomes = evaluate_sample(model, tokenizer, session, task, sample,
                                               [s.run.method for s in pending], agnostic_for(task, config))
                    for state, outcome in zip(pending, outcomes, strict=True):
                        record = {"id": sample.id, "index": index, "label": state.run.label,
                                  "references": sample.references, "meta": sample.meta, **outcome,
                                  "shared_prefill_runs": len(pending)}
                        append_record(state.directory / shard.predictions, record)
                        state.done.add(sample.id)
                        state.records.append(record)
            finally:
                elapsed = time.perf_counter() - started
                with state_lock(out, shard):
                    for state in states:
                        _add_wall_time(state.directory, elapsed, shard)
            for state in states:
                results.append(_complete(task, state, ids, out, shard))
    return results


def _complete(task: Task, state: _RunState, ids: list[str], out: Path, shard: Shard) -> RunResult:
    """Finish a run whose samples this process has done: merge any shards and write its metrics if every sample
    has a record (single process: always), else leave it to the rank that finishes it last."""
    def result(status: str, metrics: dict[str, Any] | None) -> RunResult:
        return RunResult(state.directory, task.name, state.run.label, status, metrics)

    with state_lock(out, shard):
        if not shard.distributed:
            merge_shards(state.directory)  # left by an interrupted distributed run
            metrics = finish_run(task, state, ids)
            return result("skipped" if "sample_ids_on_disk" in metrics else "finished", metrics)
        finished = _finished_metrics(state.directory, ids)
        if finished is not None:  # another rank completed and merged it after this one read its state
            return result("finished", finished)
        state.records = load_records(state.directory)
        state.done = {r["id"] for r in state.records}
        if not state.done.issuperset(ids):
            owed = sum(i not in state.done for i in ids)
            logger.info("%s %s: rank %d's share done; %d sample(s) left to other ranks", task.name, state.run.label,
                        shard.rank, owed)
            return result("partial", None)
        merge_shards(state.directory)
        state.records = load_records(state.directory)
        metrics = finish_run(task, state, ids)
        return result("skipped" if "sample_ids_on_disk" in metrics else "finished", metrics)


def _add_wall_time(directory: Path, seconds: float, shard: Shard) -> None:
    """Add a session's time to the provenance: ``wall_seconds`` (rank 0's time when distributed: the ranks run side
    by side) and, when distributed, ``rank_seconds`` per rank."""
    path = directory / PROVENANCE
    record = json.loads(path.read_text())
    if shard.rank == 0:
        record["wall_seconds"] = float(record.get("wall_seconds", 0.0)) + seconds
    if shard.distributed:
        ranks = record.setdefault("rank_seconds", {})
        ranks[str(shard.rank)] = float(ranks.get(str(shard.rank), 0.0)) + seconds
    write_json(path, record)


def _metrics_on_disk(directory: Path) -> dict[str, Any] | None:
    path = directory / METRICS
    return json.loads(path.read_text()) if path.exists() else None


def _finished_metrics(directory: Path, ids: list[str]) -> dict[str, Any] | None:
    """The run's metrics if it finished exactly the samples ``ids`` before, else None."""
    metrics = _metrics_on_disk(directory)
    return metrics if metrics is not None and metrics.get("sample_ids") == ids else None


def finish_run(task: Task, state: _RunState, ids: list[str]) -> dict[str, Any]:
    """Aggregate the records of the samples ``ids`` (in task order) into ``metrics.json``; stamp the provenance."""
    config = json.loads((state.directory / CONFIG).read_text())
    by_id = {}
    for record in state.records:
        by_id.setdefault(record["id"], record)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise RuntimeError(f"{state.directory}: no record for samples {', '.join(missing)}")
    ordered = [by_id[i] for i in ids]
    previous = _metrics_on_disk(state.directory)
    if previous is not None and set(ids) < set(previous.get("sample_ids") or []):
        # fewer samples than a finished run of this directory: report them, keep the larger metrics.json
        return {**_aggregate(task, state, config, ordered, ids), "sample_ids_on_disk": previous["sample_ids"]}
    metrics = _aggregate(task, state, config, ordered, ids)
    write_json(state.directory / METRICS, metrics)
    path = state.directory / PROVENANCE
    record = json.loads(path.read_text())
    record["finished_at"] = now()
    write_json(path, record)
    return metrics


def _aggregate(task: Task, state: _RunState, config: dict[str, Any], ordered: list[dict[str, Any]],
               ids: list[str]) -> dict[str, Any]:
    """The metrics of ``ordered`` (the records of samples ``ids``)."""
    aggregate = task.aggregate(ordered)

    def mean(key: str) -> float | None:
        values = [r[key] for r in ordered if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    m = state.run.method
    metrics = {
        "task": task.name, "model": config["model"], "label": state.run.label, "method": m.name,
        "method_label": state.run.name,
        "budget": m.budget, "compression_ratio": m.compression_ratio, "window": m.window,
        "query_mode": config["query_mode"], "samples": len(ordered), "sample_ids": ids, "score_name": task.score_name,
        "score": aggregate.get(task.score_name), **aggregate,
        "resident_kv_bytes": mean("resident_kv_bytes"), "uncompressed_kv_bytes": mean("uncompressed_kv_bytes"),
        "kept_entries": mean("kept_entries"), "prompt_tokens": mean("prompt_tokens"),
        "new_tokens": mean("new_tokens"), "decode_seconds": sum(r.get("decode_seconds") or 0.0 for r in ordered),
    }
    return metrics
