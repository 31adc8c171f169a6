"""In-process guard for the sandbox child (`child`): an audit hook and restricted builtins.

CPython's audit hooks are not a sandbox: a module that can corrupt memory (ctypes, numpy's
`__array_interface__` on a raw address) can switch them off. This guard is the middle layer,
between the static policy (`static`, which forbids those constructs) and the OS limits
that `launcher` puts on the child process (separate uid, no network, rlimits, group kill).

Once armed, the hook denies by default: process creation, signals, sockets, ctypes, file
writes outside the scratch directory, reads outside the Python installation and the
scratch directory, and new imports outside a short list. Introspection (frames, code
objects, `__code__`, marshal) is denied only while task code is on the stack, so that trusted
code (tracebacks, dataclasses) still works. Everything the hook uses is bound in closures at
arm time; nothing it depends on is reachable from module globals that task code could patch.
"""
from __future__ import annotations

import builtins
import os
import sys
import types

# Allowed anywhere, any time.
SAFE_EVENTS = frozenset({
    "builtins.id", "time.sleep", "sys.excepthook", "sys.unraisablehook", "cpython._PySys_ClearAuditHooks",
    "array.__new__", "object.__delattr__", "marshal.dumps", "tempfile.mkstemp", "tempfile.mkdtemp",
    "sys._getframemodulename", "os.listxattr",
})
# Code construction and frames: refused while any task frame is on the stack (crafted bytecode is
# a way out; a frame leads to the runner's locals), even through trusted helpers it calls.
STRICT_EVENTS = frozenset({"code.__new__", "function.__new__", "marshal.loads", "marshal.load", "sys._getframe"})
FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
# Other introspection (__code__, f_code, gi_code): refused when task code does it itself; trusted
# helpers it calls (dataclasses -> inspect.signature -> __code__) keep working.
INTROSPECTION_EVENTS = frozenset({"object.__getattr__"})
# Filesystem changes allowed inside the scratch directory: event -> (path arg indices, dir_fd arg indices).
SCRATCH_FS_EVENTS = {
    "os.mkdir": ((0,), (2,)), "os.rmdir": ((0,), (1,)), "os.remove": ((0,), (1,)),
    "os.rename": ((0, 1), (2, 3)), "os.truncate": ((0,), ()), "os.utime": ((0,), (3,)),
}
READ_EVENTS = frozenset({"os.listdir", "os.scandir"})
# Never imported afresh once armed, from trusted code or not.
DANGEROUS_IMPORTS = frozenset({
    "os", "posix", "subprocess", "_posixsubprocess", "socket", "_socket", "ssl", "_ssl", "select", "selectors",
    "ctypes", "_ctypes", "mmap", "fcntl", "pty", "termios", "resource", "multiprocessing", "_multiprocessing",
    "threading", "_thread", "signal", "_signal", "gc", "pickle", "_pickle", "marshal", "importlib", "_imp",
    "zipimport", "shutil", "tempfile", "pathlib", "urllib", "http", "ftplib", "smtplib", "xmlrpc", "webbrowser",
    "sqlite3", "_sqlite3", "code", "codeop", "pdb", "bdb", "trace", "tracemalloc", "faulthandler", "sysconfig",
    "site", "builtins", "asyncio", "concurrent", "_xxsubinterpreters", "_testcapi", "_testinternalcapi",
})
# Builtins that task code does not get (the static policy forbids naming them too).
REMOVED_BUILTINS = ("exec", "eval", "compile", "open", "globals", "locals", "vars", "getattr", "setattr",
                    "delattr", "input", "breakpoint", "help", "exit", "quit", "memoryview", "copyright",
                    "credits", "license")
# Functions with side effects that raise no audit event in CPython 3.11; replaced by stubs.
UNAUDITED = {
    "posix": ("mkfifo", "mknod", "chroot", "pidfd_open", "setns", "unshare", "setpgid", "setsid", "setpgrp",
              "sched_setaffinity", "setpriority", "nice", "register_at_fork", "fork", "forkpty",
              # raw descriptor writes and early exits would let task code forge the child's answer
              "write", "writev", "pwrite", "pwritev", "sendfile", "splice", "copy_file_range", "dup", "dup2",
              "_exit"),
    "_posixsubprocess": ("fork_exec",),
    # a signal handler is handed the interrupted frame, no audit event asked
    "_signal": ("pidfd_send_signal", "signal", "setitimer", "alarm", "set_wakeup_fd", "siginterrupt"),
    "signal": ("pidfd_send_signal", "signal", "setitimer", "alarm", "set_wakeup_fd", "siginterrupt"),
    "_imp": ("create_builtin",),
    "_thread": ("start_new_thread", "start_new"),     # a thread has no task frames on its stack
    "threading": ("_start_new_thread",),
}
UNAUDITED["os"] = UNAUDITED["posix"]
CTYPES_ESCAPES = {
    "ctypes": ("memmove", "memset", "cast", "_cast", "string_at", "wstring_at", "_string_at", "_wstring_at",
               "CDLL", "PyDLL", "cdll", "pydll", "pythonapi", "CFUNCTYPE", "PYFUNCTYPE", "LibraryLoader"),
    "_ctypes": ("dlopen", "dlsym", "call_function", "call_cdeclfunction", "PyObj_FromPtr"),
}


def _stub(name: str):
    audit = sys.audit

    def disabled(*args, **kwargs):
        audit("sandbox.disabled", name)      # recorded (and refused) by the armed hook
        raise PermissionError(f"sandbox: {name} is disabled")
    disabled.__name__ = name.rpartition(".")[2]
    return disabled


def neuter_unaudited(allow_ctypes: bool = False) -> list:
    """Replace loaded functions that escape the audit hook silently by stubs; return their names."""
    table = dict(UNAUDITED)
    if not allow_ctypes:
        table.update(CTYPES_ESCAPES)
    done = []
    for mod_name, names in table.items():
        mod = sys.modules.get(mod_name)
        for name in names if mod is not None else ():
            if name in mod.__dict__:
                setattr(mod, name, _stub(f"{mod_name}.{name}"))
                done.append(f"{mod_name}.{name}")
    return done


def restricted_builtins(allowed_modules) -> dict:
    """A builtins dict for task code: no exec/eval/open/getattr..., and imports limited to allowed_modules."""
    allowed = frozenset(allowed_modules)
    real_import, module_type, _type = builtins.__import__, types.ModuleType, type

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level != 0 or _type(name) is not str or name not in allowed:
            raise ImportError(f"sandbox: import of {name!r} is not allowed")
        mod = real_import(name, globals, locals, fromlist, level)
        for attr in fromlist or ():
            value = mod.__dict__.get(attr) if _type(attr) is str else None
            if _type(value) is module_type and value.__name__ not in allowed:
                raise ImportError(f"sandbox: importing module {attr!r} from {name!r} is not allowed")
        return mod

    table = dict(builtins.__dict__)
    for name in REMOVED_BUILTINS:
        table.pop(name, None)
    table["__import__"] = guarded_import
    return table


def install_guard(scratch: str, read_roots=(), task_files=(), task_imports=(), allow_ctypes: bool = False):
    """Arm the audit hook for this process (irreversibly); return a function listing what it blocked."""
    _type, _str, _bytes, _int, _len, _list, _code = type, str, bytes, int, len, list, types.CodeType
    _PermissionError, _getframe = PermissionError, sys._getframe
    o_write = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    scratch = os.path.realpath(scratch)
    write_roots = (scratch + "/",)
    roots = set(write_roots)
    for r in read_roots:
        for variant in (os.path.abspath(r), os.path.realpath(r)):
            roots.add(variant.rstrip("/") + "/")
    read_ok = tuple(sorted(roots)) + ("/dev/null/", "/dev/urandom/")
    tainted = set(task_files) | {"<string>"}
    task_tops = frozenset(m.partition(".")[0] for m in task_imports) | {"encodings"}
    safe, introspect, fs_events, read_events = SAFE_EVENTS, INTROSPECTION_EVENTS, dict(SCRATCH_FS_EVENTS), READ_EVENTS
    strict_events, frame_attrs = STRICT_EVENTS, FRAME_ATTRS
    dangerous = DANGEROUS_IMPORTS
    busy, blocked = [False], []

    def norm(p):
        t = _type(p)
        if t is _bytes:
            p = p.decode("utf-8", "surrogateescape")
        elif t is not _str:
            return None
        if "\x00" in p:
            return None
        if not p.startswith("/"):
            p = scratch + "/" + p
        parts = []
        for seg in p.split("/"):
            if seg == "" or seg == ".":
                continue
            if seg == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(seg)
        return "/" + "/".join(parts)

    def in_task(anywhere=True):
        """Whether task code is on the stack (anywhere) or made the audited call itself."""
        f = _getframe(3)                      # in_task <- check <- hook <- the frame that raised the event
        if not anywhere:
            return f is not None and f.f_code.co_filename in tainted
        while f is not None:
            if f.f_code.co_filename in tainted:
                return True
            f = f.f_back
        return False

    def deny(event, detail=""):
        msg = "sandbox: blocked " + event + ((" " + detail) if _type(detail) is _str and detail else "")
        if _len(blocked) < 100:
            blocked.append(msg)
        raise _PermissionError(msg)

    def check_path(event, path, writing):
        if _type(path) is _int:
            if writing and path != 1 and path != 2:
                deny(event, "(write to descriptor)")   # the answer pipe belongs to the runner
            return                            # reading an already open descriptor
        p = norm(path)
        if p is None:
            deny(event, "(path is not a plain str or bytes)")
        if writing:
            if p == scratch or not (p + "/").startswith(write_roots):
                deny(event, p)
        elif not (p + "/").startswith(read_ok):
            deny(event, p)

    def check(event, args):
        if event in safe:
            return
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            writing = _type(flags) is not _int or (flags & o_write) != 0
            absolute = _type(path) in (_str, _bytes) and path[:1] in ("/", b"/")
            if mode is None and _type(path) is not _int and not absolute:
                deny(event, "(os.open needs an absolute path)")   # dir_fd is not visible to the hook
            return check_path(event, path, writing)
        if event in read_events:
            return check_path(event, scratch if args[0] is None else args[0], False)
        if event in fs_events:
            paths, fds = fs_events[event]
            for i in fds:
                if i < _len(args) and not (args[i] is None or (_type(args[i]) is _int and args[i] == -1)):
                    deny(event, "(dir_fd)")
            for i in paths:
                check_path(event, args[i], True)
            return
        if event == "import":
            name = args[0]
            if _type(name) is not _str:
                deny(event)
            top = name.partition(".")[0]
            if top in dangerous or name in dangerous or (top not in task_tops and in_task()):
                deny(event, name)
            return
        if event == "compile" or event == "exec":
            if in_task():
                fn = args[1] if event == "compile" else (args[0].co_filename if _type(args[0]) is _code else None)
                if _type(fn) is not _str:
                    deny(event, "(filename is not a plain str)")
                tainted.add(fn)
            return
        if event in strict_events:
            if in_task():
                deny(event)
            return
        if event in introspect:
            if in_task(anywhere=args[1] in frame_attrs):
                deny(event, args[1])
            return
        if event == "object.__setattr__":
            if args[1] == "__code__" and in_task():
                deny(event, "__code__")
            return
        if allow_ctypes and event.startswith("ctypes.") and not in_task():
            return
        if event == "sandbox.disabled":
            deny(args[0] if _type(args[0]) is _str else event, "(disabled)")
        deny(event)

    def hook(event, args):
        if busy[0]:
            return
        busy[0] = True
        try:
            check(event, args)
        finally:
            busy[0] = False

    sys.addaudithook(hook)
    return lambda: _list(blocked)
