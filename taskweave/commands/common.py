"""What several `taskweave` commands share: the exit codes, numeric flag types, the --llm flags and
output-path checks made before a run starts.

Exit codes (the whole CLI): 0 success; 1 the task failed (a failed episode in plan, demo or rollout, a
rejected task file); 2 bad input (a `UserError`: unknown name, bad flag value, unusable path); 3 the run
could not complete (a `RunError`: an LLM or physics backend unavailable, an LLM request that failed;
an OS error during the run).
"""
from __future__ import annotations

import argparse
import errno
import os
import tempfile

from taskweave.sim.errors import UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3
# OS errors about a path the user named (a bad input, exit 2); any other OS error ends the run with exit 3
USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                         errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP})


# ---- flag types ------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _bounded_int(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _bounded_int(text, 0, "a non-negative integer")


def seed_int(text: str) -> int:
    """argparse type: a seed, an integer in 0 .. 2**32 - 1."""
    v = _bounded_int(text, 0, "a seed in 0..4294967295")
    if v > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"expected a seed in 0..4294967295, got {text!r}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def nonblank_text(text: str) -> str:
    """argparse type: text that is not empty or only whitespace (stripped)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty or blank")
    return text.strip()


def _bounded_int(text: str, low: int, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


# ---- the --llm flags -------------------------------------------------------------------------
def add_llm_arguments(p: argparse.ArgumentParser, default: str, help: str) -> None:
    """--llm and the OpenAI-compatible client's --llm-base-url, --llm-timeout and --llm-retries."""
    p.add_argument("--llm", default=default, help=help)
    p.add_argument("--llm-base-url", default=None, metavar="URL",
                   help="openai:MODEL: the server's base URL, e.g. http://127.0.0.1:8000/v1 "
                        "(default: $TASKWEAVE_LLM_BASE_URL, $OPENAI_BASE_URL, else api.openai.com)")
    p.add_argument("--llm-timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="openai:MODEL: seconds one HTTP attempt may take (default: 30 plus 0.05 per requested "
                        "token, n x max_tokens)")
    p.add_argument("--llm-retries", type=nonnegative_int, default=None, metavar="N",
                   help="openai:MODEL: retries after a failed attempt (timeout, connection error, 429, 5xx), "
                        "each printed to stderr (default 5)")


def llm_kwargs(args) -> dict:
    """Client options from --llm-base-url / --llm-timeout / --llm-retries (openai:MODEL specs only)."""
    kw = {}
    if getattr(args, "llm_base_url", None):
        kw["base_url"] = args.llm_base_url
    timeout = getattr(args, "llm_timeout", None)
    if timeout is not None:
        if not timeout > 0:
            raise UserError(f"--llm-timeout must be a positive number of seconds, got {timeout:g}")
        kw["timeout"], kw["timeout_per_token"] = float(timeout), 0.0   # the whole attempt, whatever its length
    if getattr(args, "llm_retries", None) is not None:
        kw["max_retries"] = int(args.llm_retries)
    if kw and (getattr(args, "llm", "") or "").split(":", 1)[0] != "openai":
        raise UserError("--llm-base-url, --llm-timeout and --llm-retries apply to --llm openai:MODEL only")
    return kw


def llm_environment(args) -> dict:
    """The --llm flags as the environment variables the OpenAI-compatible client reads (for commands whose
    LLM is built further away: generate, bringup); sets them in os.environ and returns them."""
    kw = llm_kwargs(args)
    env = {}
    if "base_url" in kw:
        env["TASKWEAVE_LLM_BASE_URL"] = kw["base_url"]
    if "timeout" in kw:
        env["TASKWEAVE_LLM_TIMEOUT"] = repr(kw["timeout"])
    if "max_retries" in kw:
        env["TASKWEAVE_LLM_RETRIES"] = str(kw["max_retries"])
    os.environ.update(env)
    return env


# ---- where episodes run (--workers / --ray) ---------------------------------------------------
def add_executor_arguments(p: argparse.ArgumentParser, default_workers: int = 1) -> None:
    """--workers N (local worker processes) and --ray ADDRESS (a Ray cluster) of the rollout executor."""
    p.add_argument("--workers", type=positive_int, default=default_workers,
                   help=f"local worker processes that run the episodes (default {default_workers})")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the episodes on Ray instead: 'auto' (this machine's cluster), HOST:PORT of a running "
                        "cluster's head, or 'local' (start one in this process); needs the [ray] extra")


def make_executor_from_args(args):
    """The rollout executor of --workers / --ray; its workers register the task library as the CLI does."""
    from taskweave.sim.rollouts import make_executor
    setup = None
    library = os.environ.get("TASKWEAVE_LIBRARY", "task_library")
    if os.path.isdir(library):
        from taskweave.generation.library import register_library
        setup = (register_library, (os.path.abspath(library),))
    return make_executor(getattr(args, "workers", 1) or 1, getattr(args, "ray", None), setup)


# ---- outputs ---------------------------------------------------------------------------------
def check_output_dir(path: str, flag: str = "--out") -> str:
    """Refuse (UserError) an output folder that could not be created or written, before the run starts.

    Nothing is created: a probe file is written and removed in the folder, or in its nearest existing
    ancestor when the folder does not exist yet."""
    if not path:
        raise UserError(f"{flag}: empty path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: exists and is not a folder")
    _probe(os.path.abspath(path), f"{flag} {path}")
    return path


def check_output_file(path: str, flag: str = "--out") -> str:
    """Refuse (UserError) an output file that could not be written (atomically: its folder must take a new
    file), before the run starts; nothing is created."""
    if not path:
        raise UserError(f"{flag}: empty path")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a folder, not a file")
    _probe(os.path.dirname(os.path.abspath(path)), f"{flag} {path}")
    return path


def _probe(folder: str, label: str) -> None:
    """Write and remove a probe file in folder (or its nearest existing ancestor); UserError when refused."""
    where = folder
    while not os.path.exists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        raise UserError(f"{label}: {where} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tw-write-check-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{label}: cannot write in {where}: {e.strerror or e}") from None


def os_error_line(e: OSError) -> str:
    """One line for an OS error, naming the path(s) it concerns."""
    what = e.strerror or str(e) or type(e).__name__
    paths = [p for p in (getattr(e, "filename", None), getattr(e, "filename2", None)) if p is not None]
    return f"{what}: {' -> '.join(str(p) for p in paths)}" if paths else what


def os_error_code(e: OSError) -> int:
    """Exit code of an OS error that escaped a run: 2 for a path the user can fix, else 3."""
    return EXIT_USAGE if getattr(e, "errno", None) in USER_ERRNOS else EXIT_INCOMPLETE


def episode_exit_code(rec) -> int:
    """0 when the episode succeeded, 3 when it could not complete (an LLM or executor failure), else 1."""
    if getattr(rec, "success", False):
        return EXIT_OK
    return EXIT_INCOMPLETE if getattr(rec, "incomplete", False) else EXIT_FAILED
