"""What a reader meets in the committed notebooks: figures shown inline, outputs free of noise
(object reprs, run-dependent HTML ids, stderr progress bars or warnings, local paths), and prose that
cites the paper rather than the project's own process.

Each check runs on every numbered notebook. A notebook still waiting for its re-execution is listed
in ``KNOWN`` with the checks it fails today and why; the test also fails when a listed notebook
already passes a listed check (the exception is then stale and must go)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))

#: words of the project's process that a reader of the paper cannot follow
PROCESS_WORDS = re.compile(r"\bthe spec\b|\bspec(?:'s)? ?§|\bthe issue\b|\bfrom the issue\b|PAPER\.md|"
                           r"\bprevious default\b|\bprevious one\b|\bearlier version\b", re.I)
REPR = re.compile(r"<[\w.]+ (?:object )?at 0x[0-9a-f]+>|Styler at 0x")
HTML_ID = re.compile(r"id=\"T_[0-9a-f]{5}")
LOCAL_PATH = re.compile(r"(?<![\w.])/(?:tmp|root|home|work|Users)/|\.venv/|site-packages/")
#: plain-text output a reader can still read: lines at most this long, one output at most this long
#: (longer material belongs in a table)
MAX_LINE, MAX_PLAIN = 200, 3000

#: notebook stem -> {check: reason}: a notebook that fails a check for a stated reason (empty: every
#: notebook passes every check)
KNOWN: dict[str, dict[str, str]] = {}


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _texts(cell: dict):
    for o in cell.get("outputs", []):
        yield o, "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")) + \
            "".join(o.get("data", {}).get("text/html", ""))


def problems(path: Path) -> dict[str, str]:
    """check name -> first offending excerpt, for one notebook."""
    cells = _load(path)
    found: dict[str, str] = {}
    src = ["".join(c.get("source", "")) for c in cells]
    n_img = sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))
    if any("savefig" in s for s, c in zip(src, cells) if c["cell_type"] == "code") and n_img == 0:
        found["figures inline"] = "saves figures but shows none"
    for s in src:
        if m := PROCESS_WORDS.search(s):
            found.setdefault("process words", m.group(0))
    for c in cells:
        for o, t in _texts(c):
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                found.setdefault("stderr", t[:80])
            for name, rx in (("object reprs", REPR), ("html ids", HTML_ID), ("local paths", LOCAL_PATH)):
                if m := rx.search(t):
                    found.setdefault(name, m.group(0))
            plain = _plain(o)
            if long := [ln for ln in plain.splitlines() if len(ln) > MAX_LINE]:
                found.setdefault("long lines", f"{len(long[0])} characters: {long[0][:60]}")
            if len(plain) > MAX_PLAIN:
                found.setdefault("raw dumps", f"{len(plain)} characters of plain text: {plain[:60]}")
    return found


def _plain(o: dict) -> str:
    """The plain text a reader sees: a stream, or a result shown without an HTML or image form."""
    if o.get("output_type") == "stream":
        return "".join(o.get("text", ""))
    data = o.get("data", {})
    if "text/html" in data or any(k.startswith("image/") for k in data):
        return ""
    return "".join(data.get("text/plain", ""))


CHECKS = ("figures inline", "process words", "stderr", "object reprs", "html ids", "local paths", "long lines",
          "raw dumps")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_reads_clean(path):
    found = problems(path)
    known = KNOWN.get(path.stem, {})
    unexpected = {k: v for k, v in found.items() if k not in known}
    assert not unexpected, f"{path.name}: {unexpected}"
    stale = [k for k in known if k not in found]
    assert not stale, f"{path.name} now passes {stale}: remove them from KNOWN"


def test_checks_catch_what_they_name(tmp_path):
    nb = {"cells": [
        {"cell_type": "markdown", "source": ["As the spec says"]},
        {"cell_type": "code", "source": ["plotting.savefig(fig, 'x')"], "outputs": [
            {"output_type": "stream", "name": "stderr", "text": ["100%|###| 3/3"]},
            {"output_type": "execute_result", "data": {"text/plain": ["<pandas.io.formats.style.Styler at 0x7f1>"],
                                                       "text/html": ["<table id=\"T_a4674\">"]}},
            {"output_type": "stream", "name": "stdout", "text": ["wrote /work/main/data/x.csv"]},
            {"output_type": "stream", "name": "stdout", "text": ["x" * 201]},
            {"output_type": "execute_result", "data": {"text/plain": ["0.123456789\n" * 300]}}]}]}
    p = tmp_path / "99_x.ipynb"
    p.write_text(json.dumps(nb))
    assert set(problems(p)) == set(CHECKS)
