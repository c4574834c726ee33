"""MiniSUPERB probe tasks, one module each, registered by name (see `base`).

Adding a task is one new module here: a `Task` subclass decorated with `@register` that gives its data
(synthetic and from its real corpus), probe, loss, metric, primary score and probe steps; then import it
below. Built-in: asr, sid, se, ss (their registration order fixes their RNG streams for real corpora).
"""

# isort: off
# imported in this order, which is the registry's: it orders results and fixes each task's RNG stream
from daisy.downstream.tasks import asr  # noqa: F401
from daisy.downstream.tasks import sid  # noqa: F401
from daisy.downstream.tasks import se  # noqa: F401
from daisy.downstream.tasks import ss  # noqa: F401

# isort: on
from daisy.downstream.tasks.base import SIZES, ProbeSize, Task, TaskData, check_names, get, names, register
from daisy.downstream.tasks.data import (
    CorpusTasks,
    corpus_tasks,
    parse_corpus_paths,
    synthetic_sources,
    synthetic_tasks,
)

__all__ = [
    "SIZES",
    "CorpusTasks",
    "ProbeSize",
    "Task",
    "TaskData",
    "check_names",
    "corpus_tasks",
    "get",
    "names",
    "parse_corpus_paths",
    "register",
    "synthetic_sources",
    "synthetic_tasks",
]
