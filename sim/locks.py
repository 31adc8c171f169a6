"""Exclusive folder locks (`FolderLock`) and pool workers that end with their parent (`worker_pool`).

A locked folder holds `DIR/.taskweave.lock`. The lock is `fcntl.flock(LOCK_EX | LOCK_NB)` on that file;
the file's content is a JSON holder record (pid, host, start time, command, purpose), only used for
messages. Why flock: the kernel drops it when the holder's last descriptor closes, so a run killed with
kill -9 leaves no live lock and staleness needs no guessing. The next run's flock simply succeeds (the
takeover is the kernel's grant: of two runs that try at once exactly one gets it, the other sees the
winner's record), and a non-empty record found then is the stale one of a holder that died without
releasing; the taker says so and writes its own. A second run while the holder lives gets `LockError`
(a `UserError`: one line naming the holder). A record naming a live process on this host with the same
start time while flock was granted means the filesystem does not honour flock: refused too.

The lock file is never deleted (unlinking a flock file races with a process that opened it just
before). A forked child (a pool or DataLoader worker) closes its inherited copy of the descriptor
(`os.register_at_fork`), so an orphaned child never keeps a dead run's lock; `worker_pool` workers also
die with their parent (Linux `PR_SET_PDEATHSIG`, and a parent-pid watchdog thread where that is missing).
flock is per host; over NFS Linux maps it to byte-range locks the server arbitrates.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Optional

from .errors import UserError
from .fileio import TEMP_PREFIX

LOCK_NAME = ".taskweave.lock"
_HELD: dict = {}   # fd -> FolderLock, for the at-fork hook
_PR_SET_PDEATHSIG = 1


class LockError(UserError, RuntimeError):
    """A folder another live run holds (the message names it), or a lock file that cannot be created."""


def _proc_stat(pid: int) -> tuple:
    """(state letter, start time in clock ticks since boot) of pid from Linux /proc, or (None, None)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None, None


def _alive(pid: int) -> bool:
    """Whether pid is a running process (a zombie, dead but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _proc_stat(pid)[0] not in ("Z", "X")


def _names_dead_process(rec: Optional[dict]) -> bool:
    """Whether a holder record names a process of this host that is no longer running."""
    return (bool(rec) and rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int)
            and not _alive(rec["pid"]))


def _describe(rec: Optional[dict]) -> str:
    if not rec:
        return "a process that has not written its holder record"
    return (f"pid {rec.get('pid')} on {rec.get('host')}, started {rec.get('started')}"
            f" ({rec.get('purpose', 'run')}: {rec.get('command', '?')})")


def _parse(raw: bytes) -> Optional[dict]:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "pid" in rec else None


class FolderLock:
    """An exclusive lock on a folder for one run (`with FolderLock(dir, "collect"):`); see the module notes."""

    def __init__(self, folder: str, purpose: str, log: Optional[Callable[[str], None]] = None, *,
                 name: str = LOCK_NAME, what: Optional[str] = None) -> None:
        """`name`: the lock file inside `folder`; `what`: the thing the messages say is in use (default the
        folder; `FolderLock.for_file` locks one file of a folder)."""
        self.folder = folder
        self.path = os.path.join(folder, name)
        self.what = what or folder
        self.purpose = purpose
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.stale: Optional[dict] = None   # the dead holder's record this lock took over, if any
        self._fd: Optional[int] = None

    @classmethod
    def for_file(cls, path: str, purpose: str, log: Optional[Callable[[str], None]] = None) -> "FolderLock":
        """A lock on one file that a run appends to or rewrites (its lock file is `.NAME.lock` beside it)."""
        folder, base = os.path.split(os.path.abspath(path))
        return cls(folder, purpose, log, name=f".{base}.lock", what=path)

    def acquire(self) -> "FolderLock":
        """Take the lock or raise LockError naming the holder; takes over (and reports) a stale lock."""
        if self._fd is not None:
            raise LockError(f"{self.path}: already held by this lock object")
        try:
            os.makedirs(self.folder, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LockError(f"{self.path}: cannot create the lock file ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            busy = exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
            holder = self._wait_for_record(fd) if busy else None
            os.close(fd)
            if not busy:
                raise LockError(f"{self.path}: cannot lock ({exc.strerror or exc})") from None
            note = ("; that pid is gone but a process it started still has the lock file open"
                    if _names_dead_process(holder) else "")
            raise LockError(f"{self.what} is in use by {_describe(holder)}{note}; wait for that run to end "
                            f"or stop it (lock {self.path})") from None
        previous = _parse(os.pread(fd, 1 << 16, 0))
        if previous and self._record_is_live(previous):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise LockError(f"{self.what} is in use by {_describe(previous)}, yet flock was granted: the "
                            f"filesystem does not honour flock; use a local folder (lock {self.path})")
        self._fd = fd
        _HELD[fd] = self
        if os.fstat(fd).st_size and previous is None:
            previous = {"pid": "?", "host": "?", "started": "?", "command": "unreadable holder record"}
        self.stale = previous
        try:
            self._write_record()
        except OSError as exc:
            self.release()
            raise LockError(f"{self.path}: cannot write the holder record ({exc.strerror or exc})") from None
        if previous:
            self.log(f"note: took over the stale lock of {self.what} left by {_describe(previous)}: that run "
                     f"ended without releasing it")
        return self

    def _wait_for_record(self, fd: int, wait_s: float = 1.0) -> Optional[dict]:
        """The holder's record; a holder that has just taken the lock gets wait_s to write it. Until it has,
        the file may still hold the record of the dead run it took over from (a takeover race): a record
        naming a process on this host that is gone is read again until the new holder's replaces it."""
        deadline = time.monotonic() + wait_s
        while True:
            rec = _parse(os.pread(fd, 1 << 16, 0))
            if (rec is not None and not _names_dead_process(rec)) or time.monotonic() > deadline:
                return rec
            time.sleep(0.02)

    @staticmethod
    def _record_is_live(rec: dict) -> bool:
        """Whether rec names another live process on this host (same pid and start time)."""
        pid = rec.get("pid")
        if rec.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
            return False
        start = _proc_stat(pid)[1]
        return _alive(pid) and start is not None and start == rec.get("proc_start")

    def _write_record(self) -> None:
        argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]] if sys.argv and sys.argv[0] else [sys.executable]
        command = shlex.join(argv)
        rec = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "command": command.replace("\n", "\\n")[:300], "purpose": self.purpose,
               "proc_start": _proc_stat(os.getpid())[1]}
        data = (json.dumps(rec) + "\n").encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Clear the holder record and drop the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.pop(fd, None)
        try:
            os.ftruncate(fd, 0)   # an empty record: the next taker knows this run ended cleanly
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def clean_temporaries(self, subfolders=("",)) -> list:
        """Remove the `.tmp-*` files (sim.fileio's temp names) an interrupted write left in the folder and in
        the given subfolders; returns (path, bytes) of each. Only the holder may: a live writer's temp file
        looks the same."""
        if self._fd is None:
            raise LockError(f"{self.path}: clean_temporaries needs the lock")
        removed = []
        for sub in subfolders:
            d = os.path.join(self.folder, sub)
            try:
                names = os.listdir(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                p = os.path.join(d, name)
                if name.startswith(TEMP_PREFIX) and os.path.isfile(p) and not os.path.islink(p):
                    size = os.path.getsize(p)
                    os.unlink(p)
                    removed.append((p, size))
        return removed

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _close_in_child() -> None:
    """In a forked child: close inherited lock descriptors (the parent keeps its lock; LOCK_UN would drop it)."""
    for fd, lock in list(_HELD.items()):
        lock._fd = None
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


# ----------------------------------------------------------------------------- workers that die with the parent
def _parent_gone(parent_pid: int, parent_start: Optional[int], direct: bool) -> bool:
    if direct:
        return os.getppid() != parent_pid     # re-parented: the parent has exited
    return not _alive(parent_pid) or (parent_start is not None and _proc_stat(parent_pid)[1] != parent_start)


def _watch_parent(parent_pid: int, parent_start: Optional[int], direct: bool, poll_s: float) -> None:
    while True:
        time.sleep(poll_s)
        if _parent_gone(parent_pid, parent_start, direct):
            os._exit(1)


def die_with_parent(parent_pid: int, parent_start: Optional[int] = None, poll_s: float = 0.5) -> None:
    """Pool initializer: end this worker when process parent_pid ends: PR_SET_PDEATHSIG=SIGKILL (Linux, via
    ctypes) when it is our parent, and a watchdog thread on its pid (the fallback elsewhere, and for workers
    started through a fork server); a parent already gone ends the worker at once."""
    direct = os.getppid() == parent_pid
    if direct and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if _parent_gone(parent_pid, parent_start, direct):   # it died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid, parent_start, direct, poll_s), name="parent-watchdog",
                     daemon=True).start()


def worker_pool(max_workers: int, **kwargs) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor whose workers exit when this process dies (kill -9 included)."""
    return ProcessPoolExecutor(max_workers=max_workers, initializer=die_with_parent, initargs=(os.getpid(), _proc_stat(os.getpid())[1]),
                               **kwargs)


__all__ = ["FolderLock", "LockError", "LOCK_NAME", "die_with_parent", "worker_pool"]
