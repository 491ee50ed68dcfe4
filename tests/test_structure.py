"""Package structure (mdkl/): no module imports another's private (underscore) names, the import
graph between mdkl modules has no cycle (imports inside functions included), and no file exceeds
600 lines. Read from the source with ``ast``, nothing is imported."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mdkl"
MAX_LINES = 600


def _modules() -> dict[str, ast.Module]:
    return {f"mdkl.{p.stem}" if p.stem != "__init__" else "mdkl": ast.parse(p.read_text(), str(p))
            for p in sorted(PKG.glob("*.py"))}


def _imports(tree: ast.Module):
    """(imported mdkl module, imported names) for every import statement anywhere in the module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mdkl":  # from mdkl import lm, kl
                for a in node.names:
                    yield f"mdkl.{a.name}", []
            elif node.module.startswith("mdkl."):
                yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mdkl."):
                    yield a.name, []


def test_no_private_names_imported_across_modules():
    bad = [f"{mod} imports {name} from {src}" for mod, tree in _modules().items()
           for src, names in _imports(tree) for name in names if name.startswith("_") and src != mod]
    assert not bad, "give shared helpers public names: " + "; ".join(bad)


def test_no_import_cycles():
    mods = _modules()
    graph = {m: {src for src, _ in _imports(t) if src in mods and src != m} for m, t in mods.items()}
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


def test_no_module_over_600_lines():
    long = {p.name: n for p in PKG.glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def test_the_package_docstring_lists_every_module():
    doc = ast.get_docstring(_modules()["mdkl"])
    missing = [p.stem for p in PKG.glob("*.py") if p.stem != "__init__" and f"``mdkl.{p.stem}``" not in doc]
    assert not missing, f"add to mdkl/__init__.py's module list: {missing}"


def test_the_detector_sees_private_and_nested_imports():
    tree = ast.parse("from mdkl.mara import _prepare\ndef f():\n    from mdkl import lm\n")
    assert list(_imports(tree)) == [("mdkl.mara", ["_prepare"]), ("mdkl.lm", [])]
