"""The package order of docs/ARCHITECTURE.md ("Layers"), enforced: a module imports only its
own package and the packages listed below it, no module imports a command, and no two
modules import each other, however indirectly. The list is read from the doc itself, so the
doc and this check cannot drift apart."""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = "commands"


def layers():
    """The packages of ARCHITECTURE.md's "Layers" list, bottom first."""
    with open(os.path.join(ROOT, "docs", "ARCHITECTURE.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d+\. `([\w.]+)`", section, flags=re.M)


def modules():
    """{dotted module name: path} of every module of kerasbn and data_tools."""
    found = {}
    for top in ("kerasbn", "data_tools"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def imports(path, known):
    """The modules of `known` that the module at `path` imports, anywhere in it."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        out |= {name for name in names if name in known}
    return out


def layer_of(module, order):
    """The layer a module belongs to: the commands' for a command (wherever it lives, as
    `benchmarks.pytorch_peer`, run in a process of its own), else its package's."""
    parts = module.split(".")
    if parts[0] == "data_tools" or is_command(MODULES[module]):
        return COMMANDS
    if module == "kerasbn":
        return order[0]
    return parts[1] if parts[1] in order else COMMANDS


def is_command(path):
    with open(path, encoding="utf-8") as f:
        return 'if __name__ == "__main__":' in f.read()


MODULES = modules()
PACKAGES = {name for name, path in MODULES.items() if path.endswith("__init__.py")}
GRAPH = {name: imports(path, MODULES) - {name} for name, path in MODULES.items()}


def test_the_doc_lists_every_package_once():
    order = layers()
    assert len(order) == len(set(order)) and order[-1] == COMMANDS
    packages = {name.split(".")[1] for name in PACKAGES if name.count(".") == 1}
    assert packages <= set(order), f"packages missing from ARCHITECTURE.md: {packages - set(order)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    order = layers()
    rank = {name: i for i, name in enumerate(order)}
    mine = layer_of(module, order)
    up = sorted(t for t in GRAPH[module] if rank[layer_of(t, order)] > rank[mine])
    assert not up, f"{module} ({mine}) imports from above its layer: {up}"


def test_no_module_imports_a_command():
    commands = {name for name, path in MODULES.items() if is_command(path)}
    assert commands, "no command found: the check would pass for nothing"
    offenders = {m: sorted(GRAPH[m] & commands) for m in MODULES if GRAPH[m] & commands}
    assert not offenders, f"commands are leaves; these import one: {offenders}"


def test_no_import_circle():
    done, active = set(), []

    def visit(node):
        if node in active:
            pytest.fail("import circle: " + " -> ".join(active[active.index(node):] + [node]))
        if node in done:
            return
        active.append(node)
        for target in sorted(GRAPH[node]):
            if target not in PACKAGES:
                visit(target)
        active.pop()
        done.add(node)

    for module in sorted(MODULES):
        visit(module)


def test_only_commands_and_the_flag_layer_read_absl_flags():
    """The library takes plain values: absl's flags are read by the commands (and parsed by
    kerasbn.flags) alone, so a library function called from Python needs no flags parsed."""
    readers = set()
    for name, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if (isinstance(node, ast.ImportFrom) and node.module == "absl"
                    and any(alias.name == "flags" for alias in node.names)) or (
                    isinstance(node, ast.Import)
                    and any(alias.name == "absl.flags" for alias in node.names)):
                readers.add(name)
    order = layers()
    library = {m for m in readers if layer_of(m, order) not in (COMMANDS, "flags")}
    assert readers and not library, f"library modules reading absl flags: {sorted(library)}"
