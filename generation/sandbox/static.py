"""Static policy for LLM-generated task modules: an allow-list over the syntax tree.

This is the first gate for generated code and the only one that runs in the main process (it
parses, never executes). A module passes when it only imports allowed modules, defines exactly
one `Task` subclass with a `build` method, keeps module-level code to imports, definitions and
constants, and never names the escape hatches of the language (`exec`, `getattr`, dunder
attributes, frames, `os`, ...). Runtime containment is the job of `launcher` and `child`.
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass

ALLOWED_MODULES = frozenset({
    "math", "numpy", "dataclasses", "typing", "__future__",
    "taskweave.envs.task", "taskweave.envs.predicates", "taskweave.sim.spec",
})
FORBIDDEN_CALLS = frozenset({
    "exec", "eval", "compile", "open", "__import__", "globals", "locals", "vars", "getattr", "setattr",
    "delattr", "input", "breakpoint", "help", "exit", "quit", "memoryview", "__build_class__",
})
FORBIDDEN_MODULE_NAMES = frozenset({
    "os", "sys", "subprocess", "socket", "ctypes", "importlib", "pathlib", "shutil", "builtins", "posix",
    "io", "gc", "inspect", "signal", "threading", "_thread", "multiprocessing", "pickle", "marshal",
    "resource", "mmap", "fcntl", "pty", "tempfile", "urllib", "http", "asyncio", "site", "sysconfig",
    "ctypeslib", "_posixsubprocess", "_imp",
})
# Attributes that reach frames, code objects and tracebacks without any dunder; numpy's file I/O and
# raw-memory helpers; and any stdlib module name (allowed modules re-export theirs: dataclasses.sys,
# typing.functools), except a few that are also harmless numpy or everyday names.
HARMLESS_MODULE_NAMES = frozenset({
    "array", "copy", "random", "select", "trace", "math", "typing", "string", "time", "enum", "numbers",
    "statistics", "keyword", "colorsys", "heapq", "bisect", "calendar", "datetime", "decimal", "fractions",
    "textwrap", "queue",
})
FORBIDDEN_ATTRS = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
    "ag_await", "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "f_trace", "tb_frame", "tb_next",
    "co_code", "co_consts", "co_names", "with_traceback", "format_map", "mro",
    "save", "savez", "savez_compressed", "savetxt", "load", "loadtxt", "genfromtxt", "fromfile", "tofile",
    "memmap", "open_memmap", "DataSource", "fromregex", "as_strided", "stride_tricks", "lib", "core", "f2py",
    "testing", "dump", "dumps",
}) | FORBIDDEN_MODULE_NAMES | (frozenset(sys.stdlib_module_names) - HARMLESS_MODULE_NAMES)
ALLOWED_DUNDER_DEFS = frozenset({"__init__", "__post_init__", "__repr__", "__str__"})
MAX_SOURCE_CHARS = 200_000
_ALLOWED_TEXT = ", ".join(sorted(ALLOWED_MODULES))
_DUNDER_IN_TEXT = re.compile(r"__\w+__")


@dataclass(frozen=True)
class Violation:
    """One breach of the static policy, located in the source."""

    line: int
    col: int
    message: str
    rule: str = "policy"
    severity: str = "error"        # "error" rejects the module, "warning" does not
    filename: str = "<task>"

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}:{self.col}: {self.severity} [{self.rule}] {self.message}"


class StaticPolicyError(ValueError):
    """A generated module that the static policy rejects; `.violations` lists why."""

    def __init__(self, violations: list, filename: str = "<task>") -> None:
        self.violations = list(violations)
        self.filename = filename
        errors = [v for v in self.violations if v.severity == "error"]
        shown = "\n  ".join(str(v) for v in errors[:8])
        more = f"\n  ... and {len(errors) - 8} more" if len(errors) > 8 else ""
        super().__init__(f"{len(errors)} static policy violation(s) in {filename}:\n  {shown}{more}")


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


class _Checker(ast.NodeVisitor):
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.out: list = []
        self.module_aliases: set = set()     # names bound to allowed modules (np, math, ...)
        self.docstrings: set = set()         # ids of docstring constants: text, never data

    def visit(self, node: ast.AST):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            self.docstrings.add(id(body[0].value))
        return super().visit(node)

    def flag(self, node: ast.AST, message: str, rule: str, severity: str = "error") -> None:
        self.out.append(Violation(getattr(node, "lineno", 0), getattr(node, "col_offset", 0), message, rule,
                                  severity, self.filename))

    def check_name(self, node: ast.AST, name: str, what: str) -> None:
        if name in FORBIDDEN_CALLS:
            self.flag(node, f"{what} {name!r} is a forbidden builtin", "forbidden-builtin")
        elif name in FORBIDDEN_MODULE_NAMES:
            self.flag(node, f"{what} {name!r} names a forbidden module", "forbidden-module")
        elif _is_dunder(name):
            self.flag(node, f"{what} {name!r} is a dunder name", "dunder")

    # ---- imports ---------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name not in ALLOWED_MODULES:
                self.flag(node, f"import of {alias.name!r} is not allowed (allowed: {_ALLOWED_TEXT})", "import")
            bound = alias.asname or alias.name.split(".")[0]
            if alias.asname:
                self.check_name(node, alias.asname, "alias")
            self.module_aliases.add(bound)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        if node.level:
            self.flag(node, "relative imports are not allowed", "import")
        elif mod not in ALLOWED_MODULES:
            self.flag(node, f"import from {mod!r} is not allowed (allowed: {_ALLOWED_TEXT})", "import")
        for alias in node.names:
            if alias.name == "*":
                self.flag(node, "star imports are not allowed", "star-import")
                continue
            if mod != "__future__":
                self.check_name(node, alias.name, "imported name")
                if alias.name in FORBIDDEN_ATTRS:
                    self.flag(node, f"importing {alias.name!r} reaches a module or I/O helper", "internals")
                if alias.name.startswith("_"):
                    self.flag(node, f"importing private name {alias.name!r} is not allowed", "private")
            if alias.asname:
                self.check_name(node, alias.asname, "alias")

    # ---- names and attributes --------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if not (node.id == "__all__" and isinstance(node.ctx, ast.Store)):   # __all__ = [...] is harmless
            self.check_name(node, node.id, "name")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        super_init = (isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
                      and node.value.func.id == "super" and attr in ALLOWED_DUNDER_DEFS)
        if _is_dunder(attr) and not super_init:
            self.flag(node, f"dunder attribute access {attr!r} is not allowed", "dunder")
        elif attr.startswith("_") and not _is_dunder(attr):
            owner = node.value.id if isinstance(node.value, ast.Name) else ""
            if owner not in ("self", "cls"):
                self.flag(node, f"private attribute {attr!r} of anything but self/cls is not allowed", "private")
        elif attr in FORBIDDEN_MODULE_NAMES or attr in FORBIDDEN_CALLS:
            self.flag(node, f"attribute {attr!r} names a forbidden module or builtin", "forbidden-module")
        elif attr in FORBIDDEN_ATTRS:
            self.flag(node, f"attribute {attr!r} reaches a module, interpreter internals or file I/O", "internals")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, (str, bytes)) and id(node) not in self.docstrings:
            text = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
            if _DUNDER_IN_TEXT.search(text):
                self.flag(node, "string constants may not contain dunder names", "dunder")

    # ---- definitions -----------------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if _is_dunder(node.name) and node.name not in ALLOWED_DUNDER_DEFS:
            self.flag(node, f"defining {node.name!r} is not allowed", "dunder")
        elif not _is_dunder(node.name):
            self.check_name(node, node.name, "function")
        for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs + [node.args.vararg, node.args.kwarg]:
            if a is not None:
                self.check_name(a, a.arg, "argument")
        self.generic_visit(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.flag(node, "async code is not allowed", "async")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.check_name(node, node.name, "class")
        if node.keywords:
            self.flag(node, "class keywords (metaclass=...) are not allowed", "metaclass")
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.flag(node, "global statements are not allowed", "scope")

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.flag(node, "nonlocal statements are not allowed", "scope")

    def visit_Await(self, node: ast.Await) -> None:
        self.flag(node, "async code is not allowed", "async")

    def visit_While(self, node: ast.While) -> None:
        if isinstance(node.test, ast.Constant) and node.test.value:
            exits = _loop_exits(node.body)
            if "break" not in exits and not exits & {"return", "raise"}:
                self.flag(node, "'while True' loop with no break, return or raise never ends", "infinite-loop")
            elif "break" not in exits:
                self.flag(node, "'while True' loop without a break", "infinite-loop", "warning")
        self.generic_visit(node)


def _loop_exits(body: list) -> set:
    """How a loop body can leave *this* loop: "break", "return", "raise" (nested defs do not count)."""
    found, stack = set(), [(n, True) for n in body]
    while stack:
        n, own = stack.pop()
        if isinstance(n, ast.Break) and own:
            found.add("break")
        elif isinstance(n, ast.Return):
            found.add("return")
        elif isinstance(n, ast.Raise):
            found.add("raise")
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(n, (ast.For, ast.While, ast.AsyncFor)):
            # a break in a nested loop's body leaves that loop; one in its else clause leaves ours
            stack.extend((c, False) for c in n.body)
            stack.extend((c, own) for c in n.orelse)
            continue
        stack.extend((c, own) for c in ast.iter_child_nodes(n))
    return found


def _is_constant_expr(node: ast.AST, aliases: set) -> bool:
    """Literals, names, arithmetic and attributes of imported modules (math.pi); no calls."""
    for n in ast.walk(node):
        if isinstance(n, (ast.Call, ast.Lambda, ast.comprehension, ast.NamedExpr, ast.Yield, ast.YieldFrom,
                          ast.Await, ast.Subscript, ast.FormattedValue)):
            return False
        if isinstance(n, ast.Attribute) and _dotted(n).split(".")[0] not in aliases:
            return False
    return True


def _module_level(tree: ast.Module, checker: _Checker) -> None:
    for i, stmt in enumerate(tree.body):
        if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef)):
            continue
        if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                and isinstance(stmt.value.value, str):
            continue                        # module docstring
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names_ok = all(isinstance(t, ast.Name) or (isinstance(t, ast.Tuple) and all(isinstance(e, ast.Name)
                           for e in t.elts)) for t in targets)
            if names_ok and stmt.value is not None and _is_constant_expr(stmt.value, checker.module_aliases):
                continue
            checker.flag(stmt, "module-level assignments must bind names to constant expressions", "module-level")
            continue
        checker.flag(stmt, f"module-level {type(stmt).__name__} statements are not allowed "
                           "(only imports, classes, functions and constants)", "module-level")


def _task_classes(tree: ast.Module, checker: _Checker) -> None:
    task_names = {"Task"}
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "taskweave.envs.task":
            task_names |= {a.asname or a.name for a in stmt.names if a.name == "Task"}
    found = []
    for stmt in tree.body:
        if not isinstance(stmt, ast.ClassDef):
            continue
        bases = {_dotted(b).split(".")[-1] if isinstance(b, ast.Attribute) else _dotted(b) for b in stmt.bases}
        if bases & task_names:
            found.append(stmt)
    if len(found) != 1:
        checker.flag(tree.body[0] if tree.body else tree, f"expected exactly one class subclassing Task, found "
                     f"{len(found)}", "task-class")
        return
    cls = found[0]
    builds = [f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "build"]
    if not builds:
        checker.flag(cls, f"task class {cls.name!r} has no build method", "task-class")
    elif len(builds[0].args.args) != 2:
        checker.flag(builds[0], "build should take exactly (self, rng)", "task-class", "warning")


def check_source(source: str, filename: str = "<task>") -> list:
    """All static-policy violations (errors and warnings) of a generated task module."""
    if not isinstance(source, str):
        return [Violation(0, 0, "source must be a str", "syntax", filename=filename)]
    if len(source) > MAX_SOURCE_CHARS:
        return [Violation(0, 0, f"source is {len(source)} characters (limit {MAX_SOURCE_CHARS})", "size",
                          filename=filename)]
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as e:
        return [Violation(e.lineno or 0, e.offset or 0, f"syntax error: {e.msg}", "syntax", filename=filename)]
    except (RecursionError, MemoryError, ValueError) as e:
        return [Violation(0, 0, f"cannot parse: {type(e).__name__}", "syntax", filename=filename)]
    checker = _Checker(filename)
    try:
        checker.visit(tree)
    except RecursionError:
        return checker.out + [Violation(0, 0, "source is nested too deeply", "syntax", filename=filename)]
    _module_level(tree, checker)
    _task_classes(tree, checker)
    return sorted(checker.out, key=lambda v: (v.line, v.col, v.rule))


def enforce_source(source: str, filename: str = "<task>") -> list:
    """Raise StaticPolicyError if the module breaks the policy; return its warnings otherwise."""
    found = check_source(source, filename)
    if any(v.severity == "error" for v in found):
        raise StaticPolicyError(found, filename)
    return found
