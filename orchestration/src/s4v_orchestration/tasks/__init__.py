"""Tasks the training loop can run: ``TASKS[config.task]`` supplies the task-specific parts."""

from __future__ import annotations

from collections.abc import Callable

from s4v_orchestration.tasks.base import Evaluation, RunContext, Task, TaskParts
from s4v_orchestration.tasks.recognition import RecognitionTask
from s4v_orchestration.tasks.retrieval import RetrievalTask

TASKS: dict[str, Callable[[], Task]] = {
    "recognition": RecognitionTask,
    "retrieval": RetrievalTask,
}


def get_task(name: str) -> Task:
    """A fresh instance of the task registered under ``name``."""
    if name not in TASKS:
        raise ValueError(f"task {name!r} is not available; choose one of {sorted(TASKS)}")
    return TASKS[name]()


__all__ = ["TASKS", "Evaluation", "RunContext", "Task", "TaskParts", "get_task"]
