"""Run a generated task module in a contained child process and get data back.

Layers, outermost first: a fresh `python -I -B` process in its own session (the whole group is
killed on timeout or exit), a fresh scratch directory as cwd, stdin closed, a minimal
environment, rlimits (address space, CPU, processes, file size, open files, no core dumps), a
network namespace of its own when `unshare` is usable, a drop to `nobody` when we are root, and
inside the child the audit-hook guard of `guard`. The static policy of `static` runs
first, in this process, unless a test asks otherwise. The child answers with one JSON object on
a dedicated pipe; nothing from the child is ever unpickled or executed here.
"""
from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional, Union

from taskweave.generation.sandbox.child import EXIT_BLOCKED, EXIT_MEMORY, JOB_FILE, SOURCE_FILE
from taskweave.generation.sandbox.static import enforce_source

CHILD_MODULE = "taskweave.generation.sandbox.child"     # run as python -I -B -m CHILD_MODULE
MEMORY_MARKERS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory")


@dataclass
class SandboxResult:
    """How a sandboxed job ended, and its JSON answer if it gave one."""

    ok: bool
    returncode: Optional[int]
    killed_by: Optional[str]            # None, "timeout", "memory" or "signal"
    stdout: str                         # tail of the child's stdout
    stderr: str                         # tail of the child's stderr
    result: Optional[dict]              # the child's answer (untrusted data)
    duration_s: float = 0.0
    error: Optional[str] = None         # why there is no usable answer, seen from this side
    isolation: dict = field(default_factory=dict)

    @property
    def blocked(self) -> list:
        """Operations the in-child guard refused, as reported by the child."""
        blocked = (self.result or {}).get("blocked", [])
        return [str(b) for b in blocked] if isinstance(blocked, list) else []


@functools.lru_cache(maxsize=None)
def network_isolation() -> tuple:
    """The command prefix that gives the child its own (empty) network namespace, or () if none works."""
    if hasattr(os, "unshare") and os.geteuid() == 0:
        return ("os.unshare",)
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    for flags in ((["-n"], ["-r", "-n"]) if os.geteuid() == 0 else (["-r", "-n"],)):
        try:
            probe = subprocess.run([exe, *flags, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return (exe, *flags, "--")
    return ()


def _others_can_read(paths) -> bool:
    """Whether a uid with no special rights can reach every path (o+x on each ancestor directory)."""
    for path in paths:
        here = os.path.realpath(path)
        while True:
            try:
                if not os.stat(here).st_mode & stat.S_IXOTH:
                    return False
            except OSError:
                return False
            if here == "/":
                break
            here = os.path.dirname(here)
    return True


@functools.lru_cache(maxsize=None)
def privilege_drop() -> dict:
    """How the child stops being root: {"uid", "gid", "prefix" (setpriv command) or (), "caps"}; {} if not root."""
    if os.geteuid() != 0:
        return {}
    try:
        import pwd
        entry = pwd.getpwnam("nobody")
        uid, gid = entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        uid, gid = 65534, 65534
    import taskweave.envs
    import taskweave.generation
    import taskweave.sim
    needed = [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    needed += list(taskweave.envs.__path__) + list(taskweave.sim.__path__) + list(taskweave.generation.__path__)
    needed += [os.path.dirname(sys.executable)]
    readable = _others_can_read(needed)
    exe = shutil.which("setpriv")
    if exe is None:       # drop inside the child, which can only work if the install is readable
        return {"uid": uid, "gid": gid, "prefix": (), "caps": None} if readable else {}
    caps = [] if readable else ["dac_read_search"]    # read-only access to a root-only Python install
    cap_arg = ",".join(["-all"] + [f"+{c}" for c in caps])
    prefix = (exe, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", f"--inh-caps={cap_arg}",
              f"--ambient-caps={cap_arg}", f"--bounding-set={cap_arg}", "--no-new-privs", "--")
    return {"uid": uid, "gid": gid, "prefix": prefix, "caps": caps}


def _read_source(module_path_or_source: Union[str, os.PathLike]) -> tuple:
    if isinstance(module_path_or_source, os.PathLike) or (
            isinstance(module_path_or_source, str) and "\n" not in module_path_or_source
            and module_path_or_source.endswith(".py")):
        path = os.fspath(module_path_or_source)
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    if not isinstance(module_path_or_source, str):
        raise TypeError("module_path_or_source must be source text or a path to a .py file")
    return module_path_or_source, "<generated-task>"


def _limits(memory_mb: int, cpu_s: int, max_procs: int, max_file_mb: int, max_open_files: int,
            unshare_net: bool):
    import resource

    def preexec() -> None:
        os.setsid()
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_NPROC, (max_procs, max_procs))
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_mb * 1024 * 1024,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if unshare_net:
            os.unshare(os.CLONE_NEWNET)      # Python 3.12+, as root
    return preexec


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _leader_exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (its pid keeps naming the group)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _collect(proc: subprocess.Popen, result_r: int, deadline: float, output_limit: int, result_limit: int) -> dict:
    """Read stdout, stderr and the result pipe until the child is gone or the deadline passes."""
    sel = selectors.DefaultSelector()
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), result_r: bytearray()}
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    timed_out = overflow = False
    exited_at = None
    while True:
        now = time.monotonic()
        if exited_at is None and _leader_exited(proc.pid):
            exited_at = now
            _kill_group(proc.pid)            # stragglers holding our pipes die with the group
        if exited_at is None and now > deadline:
            timed_out = True
            _kill_group(proc.pid)
            exited_at = now
        if exited_at is not None and (not sel.get_map() or now > exited_at + 2.0):
            break                            # all pipes drained, or held open by something we cannot kill
        if not sel.get_map():
            time.sleep(0.02)
            continue
        for key, _ in sel.select(timeout=0.05):
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fd)
                continue
            buf = bufs[key.fd]
            buf += chunk
            if key.fd == result_r and len(buf) > result_limit:
                overflow = True
                _kill_group(proc.pid)
                sel.unregister(key.fd)
            elif key.fd != result_r and len(buf) > 2 * output_limit:
                del buf[:-output_limit]
    sel.close()
    _kill_group(proc.pid)
    proc.wait()
    tail = lambda b: bytes(b[-output_limit:]).decode("utf-8", "replace")  # noqa: E731
    return {"stdout": tail(bufs[proc.stdout.fileno()]), "stderr": tail(bufs[proc.stderr.fileno()]),
            "result": bytes(bufs[result_r]), "timed_out": timed_out, "overflow": overflow}


def _killed_by(rc: int, timed_out: bool, stderr: str, answered: bool) -> Optional[str]:
    if timed_out or rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timeout"
    died = rc < 0 or (rc != 0 and not answered)       # a signal, or a crash before any answer
    if rc == EXIT_MEMORY or (died and any(m in stderr[-2000:] for m in MEMORY_MARKERS)):
        return "memory"
    if rc < 0:
        return "signal"
    return None


def run_sandboxed(module_path_or_source: Union[str, os.PathLike], job: dict, timeout_s: float = 20,
                  memory_mb: int = 1024, *, cpu_s: Optional[int] = None, max_procs: int = 32,
                  max_file_mb: int = 16, max_open_files: int = 256, output_limit: int = 16_000,
                  result_limit: int = 16 * 1024 * 1024, env: Optional[dict] = None,
                  drop_privileges: bool = True, isolate_network: bool = True,
                  skip_static_check: bool = False, keep_scratch: bool = False) -> SandboxResult:
    """Run `job` on a generated task module in a contained child process; StaticPolicyError if rejected."""
    # skip_static_check exists for tests of the runtime containment only.
    source, filename = _read_source(module_path_or_source)
    if not skip_static_check:
        enforce_source(source, filename)
    if not isinstance(job, dict) or not isinstance(job.get("kind"), str):
        raise ValueError("job must be a dict with a 'kind' string")
    job_text = json.dumps(job)
    drop = privilege_drop() if drop_privileges else {}
    net = network_isolation() if isolate_network else ()
    scratch = tempfile.mkdtemp(prefix="taskweave-sandbox-")
    isolation = {"network": " ".join(net[:-1] if net[-1:] == ("--",) else net) or None,
                 "uid": drop.get("uid", os.geteuid()), "caps": drop.get("caps"), "scratch": scratch}
    result_r, result_w = os.pipe()
    start, proc = time.monotonic(), None
    try:
        for name, text in ((JOB_FILE, job_text), (SOURCE_FILE, source)):
            with open(os.open(os.path.join(scratch, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w",
                      encoding="utf-8") as f:
                f.write(text)
        if drop:
            for path in (scratch, os.path.join(scratch, JOB_FILE), os.path.join(scratch, SOURCE_FILE)):
                os.chown(path, drop["uid"], drop["gid"])
        cmd = [sys.executable, "-I", "-B", "-m", CHILD_MODULE, "--scratch", scratch,
               "--result-fd", str(result_w)]
        if drop and not drop["prefix"]:
            cmd += ["--uid", str(drop["uid"]), "--gid", str(drop["gid"])]
        cmd = list(drop.get("prefix", ())) + cmd
        if net and net[0] != "os.unshare":
            cmd = list(net) + cmd
        child_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": scratch,
                     "TMPDIR": scratch, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                     "MKL_NUM_THREADS": "1", **(env or {})}
        cpu = cpu_s if cpu_s is not None else int(timeout_s) + 1
        preexec = _limits(memory_mb, cpu, max_procs, max_file_mb, max_open_files, net[:1] == ("os.unshare",))
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=scratch, env=child_env, pass_fds=(result_w,), close_fds=True,
                                preexec_fn=preexec)
        os.close(result_w)
        result_w = -1
        got = _collect(proc, result_r, start + timeout_s, output_limit, result_limit)
    finally:
        if proc is not None:
            if proc.returncode is None:          # interrupted while collecting: leave nothing running
                _kill_group(proc.pid)
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        for fd in (result_r, result_w):
            if fd >= 0:
                os.close(fd)
        if not keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    rc = proc.returncode
    killed_by = _killed_by(rc, got["timed_out"], got["stderr"], bool(got["result"]))
    result, error = None, None
    if got["overflow"]:
        error = "result larger than result_limit"
    elif got["result"]:
        try:
            result = json.loads(got["result"].decode("utf-8"))
            if not isinstance(result, dict):
                result, error = None, "result is not a JSON object"
        except (ValueError, UnicodeDecodeError, RecursionError):
            error = "result is not valid JSON"
    else:
        error = "child gave no result"
    err = result.get("error") if result is not None else None
    if isinstance(err, dict) and err.get("type") == "MemoryError" and killed_by is None:
        killed_by = "memory"
    ok = (rc == 0 and killed_by is None and result is not None and result.get("ok") is True
          and not result.get("blocked"))
    if error is None and rc == EXIT_BLOCKED:
        error = "the sandbox guard blocked an operation"
    return SandboxResult(ok=ok, returncode=rc, killed_by=killed_by, stdout=got["stdout"], stderr=got["stderr"],
                         result=result, duration_s=round(time.monotonic() - start, 3), error=error,
                         isolation=isolation)
