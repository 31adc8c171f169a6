"""The shape of the installed package: imports follow the layers, modules stay readable, one failure vocabulary,
one module per CLI command."""
from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import re

import pytest

import taskweave
from taskweave.sim.skill_types import FAILURES

# the layers, bottom first; a module may import its own subsystem and any layer below it
LAYERS = {"sim": 0, "envs": 1, "policies": 2, "planning": 2, "generation": 2}
WIRING = 3          # taskweave.cli, taskweave.commands, taskweave.ros, taskweave.wiring
ALLOWED_SIDEWAYS = {("generation", "planning.llm")}   # the LLM clients live in planning; generation uses them


def _modules() -> list:
    """(dotted name, file) of every module of the installed taskweave package (subpackages are walked one by
    one: an editable install maps them from their own folders)."""
    out = {"taskweave": taskweave.__file__}
    roots = [taskweave] + [importlib.import_module(f"taskweave.{s}") for s in (*LAYERS, "commands", "ros")]
    for pkg in roots:
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            spec = importlib.util.find_spec(info.name)
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                out[info.name] = spec.origin
        out[pkg.__name__] = pkg.__file__
    return sorted(out.items())


def _subsystem(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""


def _layer(dotted: str) -> int:
    sub = _subsystem(dotted)
    return LAYERS[sub] if sub else WIRING


def _imports(path: str, module: str) -> list:
    """Every taskweave module imported anywhere in a file (top level or inside functions), with its line."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    pkg = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []
    main_blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    for block in main_blocks:          # a module's script entry (`python -m ...`) is wiring, not a dependency
        tree.body.remove(block)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("taskweave")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("taskweave"):
                found += [(name, node.lineno)]
                if name in ("taskweave", "taskweave.planning", "taskweave.policies"):  # from pkg import submodule
                    found += [(f"{name}.{a.name}", node.lineno) for a in node.names]
    return found


MODULES = _modules()


def test_the_package_has_every_subsystem():
    names = {m for m, _ in MODULES}
    for sub in ("sim", "envs", "policies", "planning", "generation", "commands", "ros"):
        assert any(n.startswith(f"taskweave.{sub}.") for n in names), sub


def test_imports_follow_the_layers():
    bad = []
    for module, path in MODULES:
        mine, my_layer = _subsystem(module), _layer(module)
        for target, line in _imports(path, module):
            theirs, their_layer = _subsystem(target), _layer(target)
            if target == "taskweave" or (mine and theirs == mine):
                continue
            rest = target.split(".", 2)[1:] and ".".join(target.split(".")[1:3])
            if (mine, rest) in ALLOWED_SIDEWAYS or any(rest.startswith(b) for a, b in ALLOWED_SIDEWAYS if a == mine):
                continue
            if their_layer > my_layer or (their_layer == my_layer and theirs != mine):
                bad.append(f"{path}:{line}: {module} imports {target}")
    assert not bad, "imports against the layers (sim <- envs <- policies / planning / generation <- taskweave):\n" + \
        "\n".join(bad)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from taskweave.planning.llm import make_llm\n    from ..policies import train\n")
    found = {t for t, _ in _imports(str(f), "taskweave.envs.m")}
    assert {"taskweave.planning.llm", "taskweave.policies", "taskweave.policies.train"} <= found
    assert _layer("taskweave.planning.llm") > _layer("taskweave.envs.m")


def test_long_modules_say_why():
    long = []
    for module, path in MODULES:
        lines = open(path, encoding="utf-8").read().splitlines()
        if len(lines) > 400 and not re.search(r"\(~?\d+ lines: ", "\n".join(lines[:20])):
            long.append(f"{path}: {len(lines)} lines and no '(~N lines: reason)' near its top")
    assert not long, "\n".join(long)


def _produced_failures() -> set:
    pat = re.compile(r"SkillResult\(\s*False,\s*\"([a-z_]+)\"|_fail\(\s*\"([a-z_]+)\"|failure\s*=\s*\"([a-z_]+)\"")
    found = set()
    for _, path in MODULES:
        for m in pat.finditer(open(path, encoding="utf-8").read()):
            found.add(next(g for g in m.groups() if g))
    return found


def test_the_failure_vocabulary_is_exactly_what_the_code_produces():
    produced = _produced_failures()
    assert produced == set(FAILURES), (f"produced but not listed: {sorted(produced - set(FAILURES))}; "
                                       f"listed but never produced: {sorted(set(FAILURES) - produced)}")
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    missing = [f for f in FAILURES if f"`{f}`" not in readme]
    assert not missing, f"README does not document failures {missing}"


@pytest.mark.parametrize("name", sorted(importlib.import_module("taskweave.cli").COMMANDS))
def test_every_command_is_one_small_module(name):
    from taskweave.cli import command_module
    mod = command_module(name)
    assert mod.__name__.startswith("taskweave.commands.")
    assert isinstance(mod.HELP, str) and mod.HELP and callable(mod.add_arguments) and callable(mod.run)
