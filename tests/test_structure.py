"""Package structure (mdkl/ and its subpackages): no module imports another's private (underscore)
names, the import graph between mdkl modules has no cycle (imports inside functions included), no
file exceeds 600 lines, and the layers import only downward:

- core: the top-level modules (``mdkl.kl``, ``mdkl.runtime``, ...) import only the core;
- ``mdkl.stats`` imports only the core (and itself);
- ``mdkl.lm`` imports the core and ``mdkl.stats``, never a task or the chemistry;
- ``mdkl.tasks`` and ``mdkl.chem`` import the core, ``mdkl.lm`` and ``mdkl.stats``, never each other;
- ``mdkl.checks`` (the application layer) may import anything; nothing imports it.

Read from the source with ``ast``, nothing is imported."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mdkl"
MAX_LINES = 600
#: layer of each subpackage -> the layers it may import (besides itself); "core" = top-level modules
ALLOWED = {
    "core": set(),
    "stats": {"core"},
    "lm": {"core", "stats"},
    "tasks": {"core", "lm", "stats"},
    "chem": {"core", "lm", "stats"},
    "checks": {"core", "stats", "lm", "tasks", "chem"},
}


def _files() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _name(path: Path) -> str:
    """``mdkl/chem/prior.py`` -> ``mdkl.chem.prior``, ``mdkl/lm/__init__.py`` -> ``mdkl.lm``."""
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_name(p): ast.parse(p.read_text(), str(p)) for p in _files()}


def _is_package(name: str, modules) -> bool:
    return any(m.startswith(name + ".") for m in modules)


def _imports(tree: ast.Module, module: str = "mdkl.x", modules=None):
    """(imported mdkl module, imported names) for every import statement anywhere in the module.
    ``from mdkl.chem import prior`` names the module ``mdkl.chem.prior`` when it is one (else the
    package ``mdkl.chem`` with the name ``prior``); relative imports resolve against ``module``."""
    known = set(modules) if modules is not None else {_name(p) for p in _files()}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = module.split(".") if _is_package(module, known) else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base != "mdkl" and not base.startswith("mdkl."):
                continue
            names = []
            for a in node.names:
                if f"{base}.{a.name}" in known:  # from mdkl import lm / from mdkl.chem import prior
                    yield f"{base}.{a.name}", []
                else:
                    names.append(a.name)
            if names and base != "mdkl":  # from mdkl import __version__: the package itself, no edge
                yield base, names
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mdkl."):
                    yield a.name, []


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {src for src, _ in _imports(t, m, mods) if src in mods and src != m} for m, t in mods.items()}


def _layer(name: str) -> str:
    """``mdkl.kl`` -> core, ``mdkl.chem.prior`` / ``mdkl.chem`` -> chem; the package root ``mdkl``
    (its __init__) counts as core."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and (PKG / parts[1]).is_dir() else "core"


def test_no_private_names_imported_across_modules():
    mods = _modules()
    bad = [f"{mod} imports {name} from {src}" for mod, tree in mods.items()
           for src, names in _imports(tree, mod, mods) for name in names if name.startswith("_") and src != mod]
    assert not bad, "give shared helpers public names: " + "; ".join(bad)


def test_no_import_cycles():
    graph = _graph()
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_every_subpackage_is_a_known_layer():
    dirs = {p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert dirs == set(ALLOWED) - {"core"}, f"give each subpackage a layer in ALLOWED: {sorted(dirs)}"
    no_init = [d for d in sorted(dirs) if not (PKG / d / "__init__.py").is_file()]
    assert not no_init, f"subpackages without __init__.py: {no_init}"


def _layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({_layer(m)}) imports {n} ({_layer(n)})" for m, deps in sorted(graph.items())
            for n in sorted(deps) if _layer(n) != _layer(m) and _layer(n) not in ALLOWED[_layer(m)]]


def test_layers_import_only_downward():
    bad = _layer_violations(_graph())
    assert not bad, "layering (see this file's docstring): " + "; ".join(bad)


def test_the_layer_rule_flags_upward_and_sideways_imports():
    graph = {"mdkl.kl": {"mdkl.lm.trainer"}, "mdkl.lm.smalllm": {"mdkl.tasks.onetwo", "mdkl.runtime"},
             "mdkl.tasks.onetwo": {"mdkl.chem.prior", "mdkl.lm.rollout", "mdkl.stats.paired"},
             "mdkl.chem.stats": {"mdkl.stats.paired", "mdkl.chem.smiles"}, "mdkl.stats.paired": {"mdkl.checks.gpu"},
             "mdkl.checks.gpu": {"mdkl.chem.reward", "mdkl.tasks.creative"}}
    assert _layer_violations(graph) == [
        "mdkl.kl (core) imports mdkl.lm.trainer (lm)", "mdkl.lm.smalllm (lm) imports mdkl.tasks.onetwo (tasks)",
        "mdkl.stats.paired (stats) imports mdkl.checks.gpu (checks)", "mdkl.tasks.onetwo (tasks) imports mdkl.chem.prior (chem)"]


def test_no_module_over_600_lines():
    long = {str(p.relative_to(PKG)): n for p in _files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def test_the_package_docstring_lists_every_module():
    mods = _modules()
    doc = ast.get_docstring(mods["mdkl"])
    missing = [m for m in mods if not _is_package(m, mods) and not m.endswith(".__main__") and f"``{m}``" not in doc]
    assert not missing, f"add to mdkl/__init__.py's module list: {missing}"


@pytest.mark.parametrize("package", sorted(set(ALLOWED) - {"core"}))
def test_each_subpackage_docstring_lists_its_modules(package):
    doc = ast.get_docstring(_modules()[f"mdkl.{package}"]) or ""
    missing = [m for m in _modules() if m.startswith(f"mdkl.{package}.") and not m.endswith(".__main__")
               and f"``{m}``" not in doc]
    assert not missing, f"add to mdkl/{package}/__init__.py's docstring: {missing}"


def test_the_detector_sees_private_nested_and_relative_imports():
    mods = {"mdkl", "mdkl.mara", "mdkl.lm", "mdkl.lm.trainer", "mdkl.lm.rollout", "mdkl.chem", "mdkl.chem.prior"}
    tree = ast.parse("from mdkl.mara import _prepare\ndef f():\n    from mdkl import lm\n"
                     "from mdkl.lm import trainer, LMConfig\nfrom . import rollout\nfrom .trainer import _x\n"
                     "import mdkl.chem.prior\nfrom mdkl import __version__\n")
    assert list(_imports(tree, "mdkl.lm.diagnose", mods)) == [
        ("mdkl.mara", ["_prepare"]), ("mdkl.lm.trainer", []), ("mdkl.lm", ["LMConfig"]), ("mdkl.lm.rollout", []),
        ("mdkl.lm.trainer", ["_x"]), ("mdkl.chem.prior", []), ("mdkl.lm", [])]


def test_layer_of_a_module():
    assert [_layer(m) for m in ("mdkl", "mdkl.kl", "mdkl.lm", "mdkl.lm.trainer", "mdkl.chem.prior", "mdkl.checks.gpu")] \
        == ["core", "core", "lm", "lm", "chem", "checks"]
