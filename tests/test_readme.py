"""The README states no fact that can go stale: its results table is generated from the committed
notebooks, result CSVs and timings (``make readme``, :mod:`mdkl.checks.readme`), every other
configuration number on it or in ``docs/substitutions.md`` is checked here against its source, and
every page it links to exists."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from mdkl.checks import readme

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "data" / "results"


def _outside_block(text: str) -> str:
    head, rest = text.split(readme.BEGIN, 1)
    return head + rest.split(readme.END, 1)[1]


def test_results_block_is_what_the_committed_sources_give():
    assert readme.main(["--check"]) == 0, "run `make readme` and commit README.md"


def test_render_replaces_only_the_block_and_refuses_a_readme_without_markers():
    text = f"intro\n{readme.BEGIN}\nold table\n{readme.END}\noutro\n"
    new = readme.render(text)
    assert new.startswith("intro\n" + readme.BEGIN) and new.endswith(readme.END + "\noutro\n")
    assert "old table" not in new and "| Fig. 5 |" in new
    with pytest.raises(ValueError, match="markers"):
        readme.render("no markers here")


def test_verdict_summary_counts_and_refuses_an_unknown_claim():
    claims = {"Fig. 3: a": "holds", "Fig. 3: b": "FAILS", "Fig. 3: c": "holds", "Fig. 4: d": "holds"}
    assert readme.verdict_summary(claims, "Fig. 3") == "2 hold, 1 FAILS"
    assert readme.verdict_summary(claims, "Fig. 4") == "1 of 1 hold"
    with pytest.raises(ValueError, match="renamed"):
        readme.verdict_summary(claims, "Fig. 9")


def test_front_page_states_no_number_outside_the_generated_block():
    # numbers on the front page live in the generated block; outside it only the paper's arXiv id,
    # the core count and notebook numbers may appear
    text = _outside_block((ROOT / "README.md").read_text())
    numbers = set(re.findall(r"(?<![\w.])\d+(?:\.\d+)?", text))
    assert numbers <= {"2510.20817", "2", "05", "07"}, numbers


def test_front_page_reads_in_under_ten_minutes():
    words = len((ROOT / "README.md").read_text().split())
    assert words < 2000, f"README.md has {words} words (~{words / 200:.0f} min): move detail to docs/"


def test_every_linked_page_exists():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith("http"):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def _row(text: str, first_cell: str) -> str:
    rows = [ln for ln in text.splitlines() if ln.startswith(f"| {first_cell}")]
    assert len(rows) == 1, f"docs/substitutions.md: expected one row starting with {first_cell!r}"
    return rows[0]


def test_substitutions_page_agrees_with_the_configs_and_results():
    text = (ROOT / "docs" / "substitutions.md").read_text()
    # 1-2 task: the small model's reference split and SmolLM2's arm design
    runs = pd.read_csv(RESULTS / "onetwo_small_runs.csv")
    row = _row(text, "Qwen2.5-3B")
    assert f'P("1" given valid) = {runs.target_p1.iloc[0]:.3f}' in row
    smol = pd.read_csv(RESULTS / "onetwo_smollm2_runs.csv")
    words = {1: "one", 2: "two", 3: "three"}
    assert (f"beta = {smol.beta.iloc[0]:g}, {words[smol.seed.nunique()]} seed per arm, {smol.steps.iloc[0]} steps"
            in row)
    # chemistry: the frozen reward configuration and the number of paired seeds
    cfg = json.loads((ROOT / "data" / "chem_reward_cpu_v2.json").read_text())
    row = _row(text, "ClpP docking")
    s = cfg["synth"]
    assert f"floor {s['potency_floor']:g}, ceiling {s['potency_ceiling']:g}, k {s['potency_k']:g}" in row
    assert cfg["amide"]["potency_transform"] == s["potency_transform"] == "logit_sigmoid"
    assert f"(cpu: {s['sa_good']:g} and {s['sa_bad']:g})" in _row(text, "Syntheseus retrosynthesis, SYNTH")
    a = cfg["amide"]
    row = _row(text, "Syntheseus, ALL-AMIDE")
    assert f"{a['stock_molecules']:,} seeded MOSES" in row and f"<= {a['stock_max_heavy_atoms']} heavy atoms" in row
    chem = pd.read_csv(RESULTS / "chem_cpu_v2_runs.csv")
    n = chem.groupby(["task", "arm"]).seed.nunique()
    assert n.nunique() == 1 and f"cpu 10,000 x {n.iloc[0]} paired seeds" in _row(text, "10,000 reward calls")
    # creative QA: the cpu profile's steps, batch and seeds
    hist = pd.read_csv(RESULTS / "creative_training_history.csv")
    row = _row(text, "Qwen3-1.7B")
    assert f"cpu profile {hist.step.max()} RL steps" in row
    assert f"{words[hist.seed.nunique()]} seed" in row


def test_make_all_total_counts_only_the_stages_make_all_runs():
    t = pd.read_csv(readme.TIMINGS)
    cpu = t[t.profile == "cpu"].groupby("stage").minutes.last()
    notebooks = [s for s in cpu.index if re.match(r"\d\d_", s)]
    assert len(notebooks) == 8
    expected = cpu[notebooks].sum() + sum(cpu.get(s, 0.0) for s in readme.MAKE_ALL_EXTRA_STAGES)
    assert readme.total_minutes("cpu") == pytest.approx(expected)
    # the v1 calibration and the timings of other checks or paths are not part of make all
    assert "chem-calibrate" in cpu.index and readme.total_minutes("cpu") < cpu.sum()
