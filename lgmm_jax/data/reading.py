"""How the input pipeline's batches are computed: reading threads, worker processes, and a resumable position.

Every stream of `pipeline` is a grain ``MapDataset`` whose element k is batch k (a map over examples, then
``MapDataset.batch``), so a batch is the same whoever computes it. `BatchStream` reads it:

- ``threads`` threads per process compute whole batches ahead (grain's ``ReadOptions``); pillow's decoders
  and most numpy work release the GIL, so threads of one process share its cores for decoding.
- ``workers`` > 0 worker processes (grain's ``mp_prefetch``) each compute every ``workers``-th batch and
  hand it over in shared memory; the batches come back in order. Work that holds the GIL (Python-level
  augmentation, RandAugment) scales with processes, not threads.
- Its state is its position, ``{"position": k}``: a stream set to position k continues with batch k, for
  any worker, thread or process count of either run (a checkpoint of an older version, grain's
  ``{"next_index": n}`` over examples, is read as position n / batch size).

Worker processes never outlive the run: each watches the process that started it and exits when it is
gone (SIGKILL of the trainer included; the kernel reparents the worker and the watcher sees it within
`PARENT_CHECK_SECONDS`). An exception while reading or transforming an example, in a worker or not,
becomes one `ExampleError` naming the example, which the command line prints as one line.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import grain
from absl import flags

from lgmm_jax.data.images import UnreadableImageError

DEFAULT_THREADS = 4
BATCHES_AHEAD_PER_THREAD = 2
WORKER_BUFFER_BATCHES = 2
PARENT_CHECK_SECONDS = 0.5


class ExampleError(ValueError):
    """An example could not be read or transformed; the message names it and what went wrong."""


def example_error(source, index: int, error: Exception) -> ExampleError:
    """`ExampleError` for example ``index`` of ``source`` (its file where the source has paths)."""
    where = f"example {index} of {getattr(source, 'name', type(source).__name__)}"
    path = getattr(source, "path", None)
    if callable(path):
        where += f" ({path(index)})"
    first_line = (str(error).strip().splitlines() or [""])[0]
    return ExampleError(f"{where}: {type(error).__name__}: {first_line}")


def guarded(source, index: int, work: Callable[[], Any]) -> Any:
    """``work()``, with any exception turned into an `ExampleError` naming the example, but an unreadable
    file's (which the pipeline skips and counts) and an `ExampleError` itself."""
    try:
        return work()
    except (ExampleError, UnreadableImageError):
        raise
    except Exception as error:  # pylint: disable=broad-except
        raise example_error(source, index, error) from error


def _exit_with_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)  # pylint: disable=protected-access
        threading.Event().wait(PARENT_CHECK_SECONDS)


def watch_parent(worker_index: int, worker_count: int) -> None:
    """A worker's initialiser: exit as soon as the process that started it is gone."""
    del worker_index, worker_count
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _flags_parsed() -> None:
    """grain's worker processes read its absl flags; a library caller (a test, a notebook) parsed none."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def read_options(threads: int) -> grain.ReadOptions:
    """``threads`` reading threads keeping `BATCHES_AHEAD_PER_THREAD` batches each in flight."""
    if threads < 1:
        raise ValueError(f"data.threads={threads} must be at least 1")
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads * BATCHES_AHEAD_PER_THREAD)


def read(batches: grain.MapDataset, workers: int, threads: int) -> grain.IterDataset:
    """``batches`` as an iterable dataset computed by ``threads`` threads in each of ``workers`` processes
    (0: this process)."""
    if workers < 0:
        raise ValueError(f"data.workers={workers} must be 0 (in this process) or more")
    dataset = batches.to_iter_dataset(read_options(threads))
    if workers == 0:
        return dataset
    _flags_parsed()
    return dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=WORKER_BUFFER_BATCHES),
        worker_init_fn=watch_parent)


class BatchStream:
    """Batches of a ``MapDataset`` from a position, read by `read`; resumable by position (module docstring).

    ``examples_per_batch``: this process's batch size, to read an older checkpoint's state (examples).
    """

    def __init__(self, batches: grain.MapDataset, *, workers: int, threads: int, examples_per_batch: int):
        self._batches = batches
        self._workers = workers
        self._threads = threads
        self._examples_per_batch = examples_per_batch
        self._position = 0
        self._iterator = None

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = iter(read(self._batches[self._position:], self._workers, self._threads))
        batch = next(self._iterator)
        self._position += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"position": self._position}

    def set_state(self, state: dict) -> None:
        """Continue at ``state``'s position (an older checkpoint's ``next_index`` over examples is
        converted)."""
        self.close()
        if "position" in state:
            self._position = int(state["position"])
        else:
            self._position = int(state["next_index"]) // self._examples_per_batch

    def close(self) -> None:
        """Stop the reading threads and worker processes (a new `next` starts them again)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "close"):
            iterator.close()

    def __del__(self):
        self.close()
