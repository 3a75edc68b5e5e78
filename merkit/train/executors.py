"""Executors run independent pieces of work (the folds of a LOSO run) and gather their results.

* :class:`LocalExecutor`: in this process, or in worker processes of this machine (forked on
  the CPU; started fresh when the work uses a GPU, as CUDA cannot be used after ``fork``).
* :class:`RayExecutor`: one Ray task per item on a Ray cluster (``pip install 'merkit[ray]'``):
  a local instance started for the run, the cluster this machine belongs to (``address="auto"``)
  or a remote one through Ray Client (``ray://host:10001``). A task whose worker dies or whose
  node is lost, or that raises anything but a :class:`~merkit.errors.MerkitError` (a user or data
  mistake, which a retry would only repeat), is retried up to ``max_retries`` times.

Both call the same function as ``function(item, shared)`` on each item and return the results
in item order. ``shared`` (what every item needs: a run's samples, labels, config) is shipped
once to each worker process, not once per item, and a worker keeps it for its next items; the
function must be importable by name on every worker (a module-level function of an installed
package).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from merkit.errors import ConfigError, MerkitError

log = logging.getLogger(__name__)

OnDone = Callable[[int, Any], None]


class Executor(ABC):
    """Runs ``function(item)`` for every item; see the module docstring."""

    #: written to ``metrics.json`` (``compute.executor``)
    name: str = ""
    #: whether items are run in processes that cannot see this process's memory (they then read
    #: what they need from shared files: the view cache)
    remote: bool = False

    @property
    def parallel_folds(self) -> int:
        """Items expected to run at once (for progress estimates; 1 when unknown)."""
        return 1

    def prepare(self, device: str) -> str:
        """Adapt to the run's device setting before :meth:`map`; returns the setting workers use."""
        return device

    @abstractmethod
    def map(self, function: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None,
            on_done: OnDone | None = None) -> list[Any]:
        """``[function(item, shared) for item in items]``, possibly in parallel.

        Args:
            function: a module-level function (picklable by reference).
            items: its first argument, one call each.
            shared: its second argument, the same for every call (a worker may keep state on it
                for its next calls, e.g. views it has read).
            on_done: called in this process as ``on_done(position, result)`` when an item finishes.
        """

    def describe(self) -> dict:
        """What ``metrics.json`` records about the executor."""
        return {"name": self.name}


class LocalExecutor(Executor):
    """Items in this process (``workers=1``) or in ``workers`` processes of this machine, each
    computing on one thread (small models use cores better this way than one process on many
    threads).

    Args:
        workers: processes at once.
        start_method: ``fork`` (workers share this process's memory, no re-import) or ``spawn``
            (fresh interpreters; needed once a GPU is used). :meth:`prepare` switches to ``spawn``
            for a device other than the CPU.
    """

    name = "local"

    def __init__(self, workers: int = 1, start_method: str = "fork"):
        if workers < 1:
            raise ConfigError(f"local executor: workers must be at least 1, got {workers}")
        self.workers = int(workers)
        self.start_method = start_method

    @property
    def parallel_folds(self) -> int:
        return self.workers

    def prepare(self, device: str) -> str:
        from merkit.train.device import resolve_device

        if resolve_device(device).type != "cpu":
            self.start_method = "spawn"  # CUDA initialised before fork cannot be used in the child
        return device

    def map(self, function: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None,
            on_done: OnDone | None = None) -> list[Any]:
        if self.workers == 1 or len(items) <= 1:
            keep_freed_memory()  # as a worker does (see there)
            results = []
            for position, item in enumerate(items):
                with one_thread():  # as in a worker, so that the worker count does not change a result
                    results.append(function(item, shared))
                if on_done is not None:
                    on_done(position, results[-1])
            return results
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        gathered: dict[int, Any] = {}
        context = multiprocessing.get_context(self.start_method)
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_keep_shared,
                                 initargs=(shared,)) as pool:
            futures = {pool.submit(_on_one_thread, function, item): position for position, item in enumerate(items)}
            for future in as_completed(futures):
                position = futures[future]
                gathered[position] = future.result()
                if on_done is not None:
                    on_done(position, gathered[position])
        return [gathered[position] for position in range(len(items))]

    def describe(self) -> dict:
        return {"name": self.name, "workers": self.workers, "start_method": self.start_method}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Compute on one CPU thread inside the block. Every fold trains on one thread, in this process
    or in a local worker: multi-threaded reductions can round differently, so a fold's result
    would otherwise depend on the worker count and on the machine's core count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`keep_freed_memory` sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # blocks from this size on are mapped and unmapped one by one (glibc's dynamic ceiling)
TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap before it is given back


@functools.cache
def keep_freed_memory() -> bool:
    """Let this process's C allocator keep freed memory for the next allocation (glibc only;
    elsewhere nothing is changed). Returns whether the setting was applied.

    A training step allocates the same buffers again and again (STSTNet on the composite: about
    15 MB of maps per batch). glibc's defaults give most of that memory back to the OS at each
    free (unmapping blocks, trimming the heap top), so the next step faults every page in again
    and the kernel zeroes it: 650-4,500 page faults per epoch of one fold. With blocks under
    :data:`MMAP_THRESHOLD` taken from the heap and up to :data:`TRIM_THRESHOLD` of free memory
    kept at its top, a fold trains without page faults (``tests/test_loso.py``); the whole
    STSTNet LOSO of the composite took 10% less CPU (``bench/loso_speed.py``). The values
    computed are the same (where memory lies does not change arithmetic). A fold worker's
    memory stays at its peak until it exits.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


_worker_shared: Any = None  # a local worker process's ``shared`` (sent once, at its start)


def _keep_shared(shared: Any) -> None:
    global _worker_shared
    _worker_shared = shared
    keep_freed_memory()


def _on_one_thread(function: Callable[[Any, Any], Any], item: Any) -> Any:
    import torch

    torch.set_num_threads(1)
    return function(item, _worker_shared)


@dataclass
class _Failure:
    """A :class:`MerkitError` raised by a task, returned instead of raised so that Ray does not
    retry it (it would only repeat)."""

    error: MerkitError


class RayExecutor(Executor):
    """One Ray task per item.

    Args:
        address: ``None`` starts a local Ray instance (it lives until ``ray.shutdown()`` or the
            end of the process, so a benchmark's runs share it); ``auto``
            joins the cluster this machine belongs to (``ray start``); ``ray://host:10001``
            connects through Ray Client. Ignored when Ray is already initialised in this process.
        gpus_per_fold: GPUs Ray reserves for each task (fractions share a GPU: 0.5 runs two
            folds per GPU). None: 1 when the device setting asks for CUDA, or when it is
            ``auto`` and the cluster has GPUs; else 0.
        cpus_per_fold: CPUs Ray reserves for each task; the task computes on that many threads.
        max_retries: retries of a task that failed or was lost.

    Raises:
        ConfigError: Ray is not installed (``pip install 'merkit[ray]'``).
    """

    name = "ray"
    remote = True

    def __init__(self, address: str | None = None, gpus_per_fold: float | None = None, cpus_per_fold: float = 1,
                 max_retries: int = 3):
        try:
            import ray  # noqa: F401
        except ModuleNotFoundError as err:
            raise ConfigError("the ray executor needs Ray: pip install 'merkit[ray]'") from err
        if gpus_per_fold is not None and gpus_per_fold < 0:
            raise ConfigError(f"--gpus-per-fold must be 0 or more, got {gpus_per_fold}")
        if cpus_per_fold <= 0:
            raise ConfigError(f"--cpus-per-fold must be more than 0, got {cpus_per_fold}")
        self.address = address
        self.gpus_per_fold = gpus_per_fold
        self.cpus_per_fold = cpus_per_fold
        self.max_retries = int(max_retries)
        self._slots = 1  # folds the cluster runs at once, known after prepare()

    @property
    def parallel_folds(self) -> int:
        """Folds the cluster's CPUs (and GPUs, when folds reserve them) run at once, as of
        :meth:`prepare`; 1 before it. A cluster that grows later only makes the ETA pessimistic."""
        return self._slots

    def _connect(self) -> None:
        import ray

        if ray.is_initialized():
            return
        try:
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
        except ConnectionError as err:
            raise ConfigError(f"cannot reach the Ray cluster at {self.address}: {err}") from err

    def prepare(self, device: str) -> str:
        """Connect, decide the GPUs per task and the device setting tasks compute with.

        A task only sees the GPUs Ray reserved for it (as ``cuda``/``cuda:0``), so ``cuda:N``
        is refused, and ``auto`` computes on the CPU when no GPU is reserved.
        """
        import ray

        if device.startswith("cuda:"):
            raise ConfigError(f"--device {device}: Ray gives each fold its own GPU(s); use --device cuda or auto")
        self._connect()
        resources = ray.cluster_resources()
        cluster_gpus = resources.get("GPU", 0)
        if self.gpus_per_fold is None:
            wants_gpu = device == "cuda" or (device == "auto" and cluster_gpus > 0)
            self.gpus_per_fold = 1.0 if wants_gpu else 0.0
        slots = resources.get("CPU", 0) // self.cpus_per_fold
        if self.gpus_per_fold:
            slots = min(slots, cluster_gpus // self.gpus_per_fold)
        self._slots = max(1, int(slots))
        if self.gpus_per_fold == 0:
            if device in ("cuda", "mps"):
                raise ConfigError(f"--device {device} with --gpus-per-fold 0: Ray would reserve no GPU for the folds")
            return "cpu" if device == "auto" else device
        if device == "cpu":
            raise ConfigError(f"--device cpu with --gpus-per-fold {self.gpus_per_fold}: GPUs would be reserved and idle")
        if cluster_gpus < self.gpus_per_fold:
            raise ConfigError(f"--device {device}: the Ray cluster has no GPU for a fold ({cluster_gpus} GPUs, "
                              f"{self.gpus_per_fold} per fold); its tasks would wait forever")
        return device

    def map(self, function: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None,
            on_done: OnDone | None = None) -> list[Any]:
        import ray

        self._connect()
        task = ray.remote(_ray_task).options(
            num_cpus=self.cpus_per_fold, num_gpus=self.gpus_per_fold or 0, max_retries=self.max_retries,
            retry_exceptions=True)
        threads = max(1, int(self.cpus_per_fold))
        # in a list, so that Ray hands the reference to the task instead of the object: a worker
        # fetches and unpickles it once, for all the items it runs
        shared_ref = [ray.put(shared)]
        pending = {task.remote(function, item, shared_ref, threads): position for position, item in enumerate(items)}
        results: dict[int, Any] = {}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                position = pending.pop(done[0])
                result = ray.get(done[0])
                if isinstance(result, _Failure):
                    raise result.error
                results[position] = result
                if on_done is not None:
                    on_done(position, result)
        finally:
            for ref in pending:
                ray.cancel(ref)
        return [results[position] for position in range(len(items))]

    def describe(self) -> dict:
        return {"name": self.name, "address": self.address, "gpus_per_fold": self.gpus_per_fold,
                "cpus_per_fold": self.cpus_per_fold, "max_retries": self.max_retries}


_ray_worker_shared: dict[str, Any] = {}  # a Ray worker's ``shared`` of the current map, by object id


def _ray_task(function: Callable[[Any, Any], Any], item: Any, shared_ref: list, threads: int) -> Any:
    import ray
    import torch

    torch.set_num_threads(threads)
    keep_freed_memory()
    key = shared_ref[0].hex()
    if key not in _ray_worker_shared:
        _ray_worker_shared.clear()  # the shared object of an earlier map is not needed any more
        _ray_worker_shared[key] = ray.get(shared_ref[0])
    try:
        return function(item, _ray_worker_shared[key])
    except MerkitError as err:
        return _Failure(err)
