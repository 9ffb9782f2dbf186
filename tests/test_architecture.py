"""Who may import whom (docs/ARCHITECTURE.md), checked on the source so a shortcut fails the suite.

- The trainer, the jobs (api), the quality bench and the web app reach models only through the backend
  protocol and registry (`loraedit.backends`, `loraedit.backends.base`), never a family's module.
- The method (`conditioning`) is pure tensor code: no models, no diffusers/transformers/peft, no files.
- Nothing imports the command line (`loraedit.cli`): it is the outermost layer.
- No import cycles between the package's modules (imports inside functions count; `TYPE_CHECKING`
  imports do not: they never run).
- No module over ~420 lines (one job per module), but for the known exceptions listed by name.
- Nothing but `cli` imports `loraedit.tools` (the toy world's quality bench and the demo): the core never
  depends on the commands built on top of it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "loraedit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports at run time (TYPE_CHECKING blocks skipped)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).split(".") if path.name == "__init__.py" else _module_name(path).split(".")[:-1]
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from . import x` imports module x
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
#: A submodule's edge to its own package is left out: Python runs a package's __init__ before any of its
#: submodules, so that edge is not a design choice (the registry in backends/__init__ imports families lazily).
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name and not name.startswith(m + ".")}
         for name, path in MODULES.items()}
FAMILY_MODULES = {m for m in MODULES if m.startswith("loraedit.backends.")} - {"loraedit.backends.base"}


@pytest.mark.parametrize("layer", ["loraedit.train", "loraedit.api", "loraedit.encoding", "loraedit.sampling",
                                   "loraedit.tools", "loraedit.ui"])
def test_core_layers_reach_models_only_through_the_protocol(layer):
    offenders = {name: sorted(GRAPH[name] & FAMILY_MODULES) for name in MODULES
                 if (name == layer or name.startswith(layer + ".")) and GRAPH[name] & FAMILY_MODULES}
    assert not offenders, f"{offenders}: use loraedit.backends (the registry) or loraedit.backends.base"


def test_the_method_is_pure_tensor_code():
    imports = _imports(MODULES["loraedit.conditioning"])
    banned = [m for m in imports if m.split(".")[0] in ("diffusers", "transformers", "peft", "safetensors", "PIL",
                                                        "av", "os", "pathlib", "shutil", "json")
              or (m.startswith("loraedit.") and m != "loraedit.conditioning")
              or m in ("torch.nn",) or m.startswith("torch.nn.modules")]
    assert not banned, f"conditioning imports {banned}"
    source = MODULES["loraedit.conditioning"].read_text()
    assert "open(" not in source and "nn.Module" not in source


def test_nothing_imports_the_command_line():
    command_line = {m for m in MODULES if m == "loraedit.cli" or m.startswith("loraedit.cli.")}
    importers = sorted(name for name, deps in GRAPH.items() if deps & command_line and name not in command_line)
    assert not importers, f"{importers} import loraedit.cli: move what they need below it (e.g. errors.py)"


def test_no_import_cycles():
    cycles = []
    for start in sorted(GRAPH):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in GRAPH[node]:
                if dep == start:
                    cycles.append(" -> ".join(path + [start]))
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, path + [dep]))
    shortest = {frozenset(c.split(" -> ")): c for c in sorted(cycles, key=len, reverse=True)}
    assert not shortest, "import cycles:\n" + "\n".join(sorted(shortest.values(), key=len)[:10])


def test_the_checks_see_the_package():
    """Guard against a vacuous pass: the graph holds the modules and edges the rules talk about."""
    assert {"loraedit.train", "loraedit.api", "loraedit.conditioning", "loraedit.backends.wan"} <= set(MODULES)
    assert "loraedit.backends.wan" in GRAPH["loraedit.backends"] or "loraedit.backends.wan" in {
        d for d in _imports(MODULES["loraedit.backends"])}
    assert "loraedit.conditioning" in GRAPH["loraedit.api"]


#: Lines a module may have: one job per module, so a reader finds a thing by its module's name (issue 14).
MAX_LINES = 420
#: Known to be longer, to be split when nobody else is editing them (none today: a new long module fails).
LONG_MODULES: set[str] = set()


def test_no_module_is_longer_than_its_one_job_needs():
    assert LONG_MODULES <= set(MODULES), "a known exception was renamed or removed: update LONG_MODULES"
    long = {name: n for name, path in MODULES.items()
            if name not in LONG_MODULES and (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"{long}: over {MAX_LINES} lines; split by job (docs/ARCHITECTURE.md, rule 5)"


def test_only_the_command_line_imports_the_tools():
    """`tools` (the quality bench, the demo) sits on top of the library: the core must not depend on it."""
    tools = {m for m in MODULES if m == "loraedit.tools" or m.startswith("loraedit.tools.")}
    command_line = {m for m in MODULES if m == "loraedit.cli" or m.startswith("loraedit.cli.")}
    assert {"loraedit.tools.quality", "loraedit.tools.demo"} <= tools  # the rule is not vacuous:
    assert any(GRAPH[m] & tools for m in command_line)  # the graph sees cli's imports of them
    importers = sorted(name for name, deps in GRAPH.items() if deps & tools and name not in tools | command_line)
    assert not importers, f"{importers} import loraedit.tools: depend on the library instead (docs/ARCHITECTURE.md)"
