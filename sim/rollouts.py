"""The one rollout executor: jobs (a module-level function and its arguments) run inline, on local worker
processes (`--workers N`) or on a Ray cluster (`--ray ADDRESS`); collection, evaluation, `taskweave rollout`,
task validation and the experiment scripts all dispatch their episodes through it.

`make_executor(workers, ray, setup)`: `ray=None` and workers 1 -> inline (in this process); workers > 1 ->
a local process pool whose workers die with this process (`locks.worker_pool`'s parent-death signal);
`ray="local"` starts a Ray instance in this process, `ray="auto"` joins the cluster of this machine, and
`ray="HOST:PORT"` the cluster whose head listens there. `setup=(fn, args)` runs once in every worker
process before its first job (the CLI uses it to register the task library there too).

`submit(fn, *args) -> ticket` and `next_done() -> (ticket, result)` (as jobs finish; a job's exception is
raised there), `imap_unordered(fn, jobs, window)` and `map(fn, jobs)` on top of them. Results never depend
on the executor or the worker count: a job is a pure function of its arguments (episodes are seeded).

Faults: a worker process that dies in the middle of a job (killed, out of memory, a crash in the physics)
loses nothing but that job's progress: the local pool is rebuilt and its unfinished jobs run again; Ray
re-runs them on another worker or node by itself (`max_retries`). Each job is tried at most
`max_attempts` times (a job that keeps killing its worker is a `RunError`); a result is handed out once.
Ray is the `[ray]` extra: without it, asking for Ray is a `UserError` naming the pip command.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import socket
import sys
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, Optional, Sequence

from .errors import RunError, UserError
from .locks import die_with_parent

RAY_PIP = "pip install 'taskweave[ray]'  (or: pip install ray==2.60.0)"
MAX_ATTEMPTS = 3                      # tries of one job whose worker process died under it
FORWARD_ENV = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "TASKWEAVE_LIBRARY", "OMP_NUM_THREADS")
_SETUP_DONE: set = set()              # setups already run in this process


class ExecutorError(UserError, ValueError):
    """A bad --workers / --ray request (Ray missing, no cluster at the address, both flags at once)."""


def _run_setup(setup: Optional[tuple]) -> None:
    """Run setup=(fn, args) once per process."""
    if not setup:
        return
    fn, args = setup
    key = (getattr(fn, "__module__", ""), getattr(fn, "__qualname__", repr(fn)), repr(args))
    if key in _SETUP_DONE:
        return
    fn(*args)
    _SETUP_DONE.add(key)


def _single_thread() -> None:
    """One math thread per worker: N workers on N cores, and the same floating-point reductions everywhere."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _local_worker_init(parent_pid: int, setup: Optional[tuple]) -> None:
    die_with_parent(parent_pid)
    _single_thread()
    _run_setup(setup)


def _ray_call(setup, fn, args):
    """What a Ray task runs: the setup once per worker process, then the job."""
    _single_thread()
    _run_setup(setup)
    return fn(*args)


class RolloutExecutor:
    """Runs jobs inline, on local processes or on Ray (see the module notes); use as a context manager."""

    kind = "inline"

    def __init__(self, setup: Optional[tuple] = None, max_attempts: int = MAX_ATTEMPTS, log=None) -> None:
        self.setup, self.max_attempts = setup, max_attempts
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self._jobs: dict = {}          # ticket -> [fn, args, attempts, handle]
        self._next = 0
        self.retried = 0               # jobs re-run after their worker died

    # -- what every executor offers
    @property
    def parallelism(self) -> int:
        """Jobs that run at the same time (worker processes, or CPUs of the Ray cluster)."""
        return 1

    def describe(self) -> str:
        """One phrase naming the executor, e.g. 'Ray at 127.0.0.1:6379 (4 CPUs)'."""
        return "inline (1 process)"

    @property
    def pending(self) -> int:
        """Submitted jobs whose result has not been handed out yet."""
        return len(self._jobs)

    def submit(self, fn: Callable, *args) -> int:
        """Queue fn(*args); returns a ticket that next_done() hands back with the result."""
        ticket, self._next = self._next, self._next + 1
        self._jobs[ticket] = [fn, args, 0, None]
        self._start(ticket)
        return ticket

    def next_done(self) -> tuple:
        """(ticket, result) of a finished job (blocks); a job's own exception is raised here."""
        if not self._jobs:
            raise RuntimeError("next_done() with no job pending")
        return self._wait_one()

    def imap_unordered(self, fn: Callable, jobs: Iterable[Sequence], window: Optional[int] = None) -> Iterator:
        """(index, result) for each job (an argument tuple) as they finish, at most `window` in flight."""
        window = window or 2 * self.parallelism
        it, index, running = iter(enumerate(jobs)), {}, 0
        exhausted = False
        while True:
            while not exhausted and running < window:
                try:
                    i, args = next(it)
                except StopIteration:
                    exhausted = True
                    break
                index[self.submit(fn, *args)] = i
                running += 1
            if not running:
                return
            ticket, result = self.next_done()
            running -= 1
            yield index.pop(ticket), result

    def map(self, fn: Callable, jobs: Iterable[Sequence], window: Optional[int] = None) -> list:
        """The results of fn(*job) for every job, in job order."""
        out = {}
        for i, r in self.imap_unordered(fn, jobs, window):
            out[i] = r
        return [out[i] for i in range(len(out))]

    def close(self) -> None:
        """Stop the workers (idempotent); jobs still pending are dropped."""
        self._jobs.clear()

    def __enter__(self) -> "RolloutExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- inline: jobs run in this process when their result is asked for, oldest first
    def _start(self, ticket: int) -> None:
        pass

    def _wait_one(self) -> tuple:
        ticket = min(self._jobs)
        fn, args, _, _ = self._jobs.pop(ticket)
        _run_setup(self.setup)
        return ticket, fn(*args)


class LocalExecutor(RolloutExecutor):
    """Worker processes on this machine (a pool that is rebuilt when one of its workers dies)."""

    kind = "local"

    def __init__(self, workers: int, setup: Optional[tuple] = None, max_attempts: int = MAX_ATTEMPTS,
                 log=None) -> None:
        super().__init__(setup, max_attempts, log)
        self.workers = int(workers)
        self._pool: Optional[cf.ProcessPoolExecutor] = None

    @property
    def parallelism(self) -> int:
        return self.workers

    def describe(self) -> str:
        return f"local pool ({self.workers} worker processes)"

    def _pool_now(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(max_workers=self.workers, initializer=_local_worker_init,
                                                initargs=(os.getpid(), self.setup))
        return self._pool

    def _start(self, ticket: int) -> None:
        job = self._jobs[ticket]
        job[2] += 1
        job[3] = self._pool_now().submit(job[0], *job[1])

    def _wait_one(self) -> tuple:
        while True:
            futures = {job[3]: t for t, job in self._jobs.items()}
            done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
            for fut in sorted(done, key=futures.get):
                if isinstance(fut.exception(), BrokenProcessPool):
                    continue
                ticket = futures[fut]
                del self._jobs[ticket]
                return ticket, fut.result()   # a job's own exception is raised here
            self._restart()

    def _restart(self) -> None:
        """A worker died: every job of the broken pool that did not finish runs again on a new pool."""
        def finished(fut) -> bool:   # a result (or the job's own exception) that is handed out as it is
            return fut.done() and not fut.cancelled() and not isinstance(fut.exception(), BrokenProcessPool)

        again = sorted(t for t, job in self._jobs.items() if not finished(job[3]))
        old, self._pool = self._pool, None
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
        for t in again:
            if self._jobs[t][2] >= self.max_attempts:
                fn = self._jobs[t][0]
                raise RunError(f"a worker process died under job {getattr(fn, '__name__', fn)}{self._jobs[t][1]!r:.120} "
                               f"{self._jobs[t][2]} times; giving up")
        self.log(f"note: a worker process died; re-running {len(again)} unfinished job(s) on a new pool")
        self.retried += len(again)
        for t in again:
            self._start(t)

    def close(self) -> None:
        super().close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor(RolloutExecutor):
    """Jobs as Ray tasks (one CPU each) on a running cluster, or on a Ray instance started here ('local')."""

    kind = "ray"

    def __init__(self, address: str, workers: Optional[int] = None, setup: Optional[tuple] = None,
                 max_attempts: int = MAX_ATTEMPTS, log=None) -> None:
        super().__init__(setup, max_attempts, log)
        ray = import_ray()
        self.address, self._ray = address, ray
        self._started = not ray.is_initialized()
        if self._started:
            _connect(ray, address, workers)
        self._remote = ray.remote(num_cpus=1, max_retries=max_attempts - 1, retry_exceptions=False)(_ray_call)
        self._cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._nodes = len([n for n in ray.nodes() if n.get("Alive")])

    @property
    def parallelism(self) -> int:
        return self._cpus

    def describe(self) -> str:
        where = "a Ray instance started in this process" if self.address == "local" else f"Ray at {self.address}"
        return f"{where} ({self._cpus} CPUs, {self._nodes} node(s))"

    def _start(self, ticket: int) -> None:
        job = self._jobs[ticket]
        job[2] += 1
        job[3] = self._remote.remote(self.setup, job[0], job[1])

    def _wait_one(self) -> tuple:
        ray = self._ray
        refs = {job[3]: t for t, job in self._jobs.items()}
        ready, _ = ray.wait(list(refs), num_returns=1)
        ticket = refs[ready[0]]
        fn, args = self._jobs.pop(ticket)[:2]
        try:
            return ticket, ray.get(ready[0])
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None     # the job's own exception, as the local pool raises it
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError) as e:
            raise RunError(f"Ray lost job {getattr(fn, '__name__', fn)}{args!r:.120} {self.max_attempts} times "
                           f"({type(e).__name__}); giving up") from None

    def close(self) -> None:
        for job in self._jobs.values():
            try:
                self._ray.cancel(job[3], force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass
        super().close()
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False


def import_ray():
    """The ray module, or an ExecutorError naming the pip command."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--ray needs Ray, which is not installed: {RAY_PIP}") from None
    return ray


def _connect(ray, address: str, workers: Optional[int]) -> None:
    """ray.init for 'local', 'auto' or HOST:PORT; a HOST:PORT nobody answers on is an ExecutorError at once."""
    import logging
    env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    kw = dict(log_to_driver=False, logging_level=logging.ERROR, runtime_env={"env_vars": env} if env else None)
    if address == "local":
        ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, **kw)
        return
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ExecutorError(f"--ray {address!r}: expected 'local', 'auto' or HOST:PORT of a cluster's head")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as e:
            raise ExecutorError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e}); start one "
                                f"with `ray start --head --port {port}`") from None
    try:
        ray.init(address=address, **kw)
    except ConnectionError as e:
        raise ExecutorError(f"--ray {address}: cannot join the cluster ({str(e).splitlines()[0][:200]})") from None


def make_executor(workers: int = 1, ray: Optional[str] = None, setup: Optional[tuple] = None,
                  log=None) -> RolloutExecutor:
    """The executor that --workers N / --ray ADDRESS ask for (see the module notes)."""
    if ray:
        return RayExecutor(ray, workers, setup, log=log)   # 'local': a Ray instance of `workers` CPUs
    if workers is None or workers < 1:
        raise ExecutorError(f"--workers must be a positive integer, got {workers!r}")
    return LocalExecutor(workers, setup, log=log) if workers > 1 else RolloutExecutor(setup, log=log)


__all__ = ["RolloutExecutor", "LocalExecutor", "RayExecutor", "ExecutorError", "make_executor", "import_ray",
           "RAY_PIP", "MAX_ATTEMPTS"]
