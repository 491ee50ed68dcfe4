"""``make check-machine``: where this machine's numbers come from, and how its results compare
with the committed ones.

What is identical where: on one numeric path (CPU vendor, pinned or native kernels, torch version:
:func:`mdkl.machine.numeric_path`) seeded runs repeat bit for bit, so a fresh clone's ``make all``
rewrites the committed CSVs byte for byte (apart from wall-time columns). On another path the runs
differ in their last bits and training grows them: the numbers move within the seed spread, and
only the verdicts (the ``[holds]`` / ``[FAILS]`` lines the notebooks print) are meant to agree.
This module prints the machine, the path each committed result file was computed on
(``data/results/provenance.json``, written by :func:`mdkl.runtime.write_csv`), and, after a run on
this machine, (1) every claim line of the executed notebooks beside the committed one and (2) for
every result CSV this machine rewrote, how far its numbers moved from the committed file (git HEAD).

``python -m mdkl.reproduce [--profile cpu]``
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

from mdkl.machine import cpu_model, numeric_kernels, numeric_path
from mdkl.runtime import PROVENANCE, RESULTS_DIR, ROOT, resolve_profile

__all__ = ["claim_lines", "compare_claims", "compare_csv", "main"]

#: a verdict line: ``[holds] ...``, ``[FAILS] ...``, ``[inconclusive] ...``, ``[not tested (reason)] ...``
_CLAIM = re.compile(r"^\[(holds[^\]]*|FAILS|inconclusive|not tested[^\]]*)\] (.*)$")


def claim_lines(notebook: Path) -> dict[str, str]:
    """``statement -> verdict`` for every claim line an executed notebook printed (the format of
    :func:`mdkl.runtime.claim`, and verdict lines such as ``[not tested (MARA inactive)] ...``). A
    statement printed twice keeps its last verdict."""
    nb = json.loads(Path(notebook).read_text())
    out = {}
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            text = "".join(o.get("text", "")) if o.get("output_type") == "stream" else ""
            for line in text.splitlines():
                m = _CLAIM.match(line)
                if m:
                    out[m.group(2)] = m.group(1)
    return out


def compare_claims(committed: Path, executed: Path) -> list[dict]:
    """One row per claim statement of either notebook: its committed and its executed verdict
    (``None`` where a notebook has no such line) and whether they agree."""
    a, b = claim_lines(committed), claim_lines(executed)
    return [{"claim": k, "committed": a.get(k), "here": b.get(k), "same": a.get(k) == b.get(k)}
            for k in list(a) + [k for k in b if k not in a]]


def _git_show(path: Path) -> str | None:
    try:
        rel = Path(path).resolve().relative_to(ROOT.resolve())
        r = subprocess.run(["git", "show", f"HEAD:{rel.as_posix()}"], cwd=ROOT, capture_output=True, text=True)
    except (ValueError, OSError):
        return None
    return r.stdout if r.returncode == 0 else None


def compare_csv(path: Path, committed_text: str | None = None) -> dict | None:
    """How a result CSV on disk differs from its committed version (``committed_text``, default the
    file at git HEAD): rows, the largest relative difference over numeric columns, |a - b| / max(|a|, |b|)
    (1 where a count moved from 0; wall-time columns, named ``seconds`` or ``*_s``, skipped) and the number of differing text cells (verdicts and labels
    live in text columns). ``None`` when there is no committed version or the file is unchanged."""
    import numpy as np
    import pandas as pd

    committed_text = _git_show(path) if committed_text is None else committed_text
    here_text = Path(path).read_text()
    if committed_text is None or committed_text == here_text:
        return None
    a, b = pd.read_csv(io.StringIO(committed_text)), pd.read_csv(io.StringIO(here_text))
    row = {"file": Path(path).name, "rows": f"{len(a)} -> {len(b)}", "max_rel_diff": float("nan"), "text_cells_differ": 0,
           "columns": ""}
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        row["columns"] = "layout changed"
        return row
    worst, col_worst, text = 0.0, "", 0
    for c in a.columns:
        if c == "seconds" or c.endswith("_s"):
            continue
        x, y = a[c], b[c]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            x, y = x.to_numpy(np.float64), y.to_numpy(np.float64)
            both = np.isfinite(x) & np.isfinite(y)
            rel = np.abs(x - y)[both] / np.maximum(np.maximum(np.abs(x[both]), np.abs(y[both])), 1e-12)  # <= 2
            nan_moved = int((np.isnan(x) != np.isnan(y)).sum())
            m = float(rel.max()) if rel.size else 0.0
            if nan_moved:
                m = float("inf")
            if m > worst:
                worst, col_worst = m, c
        else:
            text += int((x.astype(str) != y.astype(str)).sum())
    row.update(max_rel_diff=worst, text_cells_differ=text, columns=col_worst)
    return row


def main(argv=None) -> int:
    import argparse

    import pandas as pd

    ap = argparse.ArgumentParser(prog="python -m mdkl.reproduce", description=main.__doc__)
    ap.add_argument("--profile", default=None, help="profile whose executed notebooks to compare (default cpu)")
    args = ap.parse_args(argv)
    profile = resolve_profile(args.profile)
    cpu, k = cpu_model(), numeric_kernels()
    print(f"this machine: {cpu['model']} ({cpu['vendor']}, {cpu['machine']})")
    print(f"kernel path:  {'pinned (mdkl AVX2)' if k['pinned'] else 'native (MDKL_NATIVE_KERNELS=1 or variables unset)'}; "
          f"ATen {k['aten_capability']}, ATEN_CPU_CAPABILITY={k['ATEN_CPU_CAPABILITY']}, MKL_CBWR={k['MKL_CBWR']}, "
          f"ONEDNN_MAX_CPU_ISA={k['ONEDNN_MAX_CPU_ISA']}, {k['torch_threads']} torch threads")
    here = numeric_path()
    print(f"numeric path: {here}")
    committed = json.loads(_git_show(PROVENANCE) or "{}")
    paths = sorted({v["numeric_path"] for v in committed.values()})
    unrecorded = sorted(p.name for p in RESULTS_DIR.glob("*.csv") if p.name not in committed and "quick" not in p.name)
    print(f"\ncommitted results were computed on: {', '.join(paths) if paths else 'no path recorded'}"
          + (f"; {len(unrecorded)} committed file(s) predate the record" if unrecorded else ""))
    if paths:
        same = here in paths
        print("  -> " + ("the same numeric path as (some of) them: seeded runs here repeat those bit for bit" if same else
                         "another numeric path: numbers move within the seed spread; verdicts are meant to agree"))
    executed = sorted((ROOT / "executed" / profile).glob("[0-9][0-9]_*.ipynb"))
    print(f"\nclaim lines of executed/{profile}/ beside the committed notebooks ({len(executed)} executed):")
    n_diff = 0
    for nb in executed:
        rows = compare_claims(ROOT / "notebooks" / nb.name, nb)
        diff = [r for r in rows if not r["same"]]
        n_diff += len(diff)
        print(f"  {nb.stem}: {len(rows) - len(diff)} of {len(rows)} claim lines identical")
        for r in diff:
            print(f"    committed {r['committed'] or '-':>5} | here {r['here'] or '-':>5} | {r['claim']}")
    if not executed:
        print(f"  none: run `make all PROFILE={profile}` first")
    rows = [r for r in (compare_csv(p) for p in sorted(RESULTS_DIR.glob("*.csv"))) if r is not None]
    print(f"\nresult files this machine rewrote ({len(rows)}), against the committed ones:")
    if rows:
        with pd.option_context("display.width", 200, "display.max_colwidth", 60):
            print(pd.DataFrame(rows).to_string(index=False))
    print(f"\n{n_diff} claim line(s) differ from the committed notebooks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
