"""Evaluation harness: tasks (needle, RULER subset, code completion, fidelity, LongBench), metrics, the resumable
runner (one exact prefill per sample for every method x budget), provenance and reports (EVALUATION.md)."""

from lavakv.eval.runner import EvalConfig, RunResult, plan_runs, run_eval
from lavakv.eval.tasks import TaskOptions, build_tasks

__all__ = ["EvalConfig", "RunResult", "TaskOptions", "build_tasks", "plan_runs", "run_eval"]
