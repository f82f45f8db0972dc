"""The house rules of docs/ARCHITECTURE.md that a reader relies on to find things: no
function longer than 80 lines, at most 12 modules to a package (its `__init__` included;
kerasbn's top level, which holds the commands so `python -m kerasbn.NAME` stays, aside), and
a docstring on every module."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONGEST = 80
MODULES_PER_PACKAGE = 12


def _python_files():
    for top in ("kerasbn", "data_tools", "tests", "launch"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            yield from (os.path.join(folder, f) for f in files if f.endswith(".py"))


def _tree(path):
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read())


@pytest.mark.parametrize("path", sorted(_python_files()), ids=lambda p: os.path.relpath(p, ROOT))
def test_no_function_is_longer_than_80_lines(path):
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(_tree(path))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST]
    assert not long, f"split these: {long}"


def test_every_package_holds_at_most_12_modules_and_every_module_says_what_it_is():
    crowded, silent = [], []
    for top in ("kerasbn", "data_tools"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            modules = [f for f in files if f.endswith(".py")]
            if len(modules) > MODULES_PER_PACKAGE and folder != os.path.join(ROOT, "kerasbn"):
                crowded.append(os.path.relpath(folder, ROOT))
            silent += [os.path.relpath(os.path.join(folder, f), ROOT) for f in modules
                       if f != "__init__.py" and not ast.get_docstring(
                           _tree(os.path.join(folder, f)))]
    assert not crowded and not silent, (crowded, silent)
