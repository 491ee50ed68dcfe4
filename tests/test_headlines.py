"""Headline verdicts as functions of the committed data: each is recomputed here from the per-run
CSVs under data/results/ (no run repeated) and must be exactly what the committed notebook prints.
So CI checks the default profile's headlines without re-running it; nbval keeps checking the
smoke lines that every profile runs."""

import json

import pandas as pd
import pytest

from mdkl.checks.onetwo_paths import other_path_tags
from mdkl.chem import calibration as chem_calibration, stats as chem_stats
from mdkl.runtime import DATA_DIR, RESULTS_DIR, ROOT
from mdkl.tasks import creative_design as cd, onetwo_claims


def printed(notebook: str) -> list[str]:
    """The text of every stream output of the committed notebook, in order."""
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    return ["".join(out["text"]) for cell in nb["cells"] for out in cell.get("outputs", [])
            if out.get("output_type") == "stream"]


def printed_verdicts(notebook: str) -> list[str]:
    """Every '[verdict] statement' line the committed notebook printed, in order."""
    return [s for text in printed(notebook) for s in text.splitlines() if s.startswith("[")]


def test_chemistry_primary_verdicts_recomputed_from_the_committed_runs():
    """The v2 analogue's headline: notebook 06 prints exactly the verdicts recomputed from its per-run CSV."""
    runs = pd.read_csv(RESULTS_DIR / "chem_cpu_v2_runs.csv")
    cal = chem_calibration.load_calibration(chem_calibration.calibration_path("cpu", "v2"))
    prim = chem_stats.primary_tests(runs, cal.planning_sd).set_index("task")
    want = [f"[{prim.loc[t, 'verdict']}] {chem_stats.primary_statement(label)}"
            for t, label in chem_stats.TASK_LABELS.items()]
    got = [s for s in printed_verdicts("06_chemistry.ipynb") if "raises the unique-hit yield" in s]
    assert got == want
    committed = pd.read_csv(RESULTS_DIR / "chem_cpu_v2_primary_test.csv").set_index("task")
    assert committed.verdict.to_dict() == prim.verdict.to_dict()
    pd.testing.assert_series_equal(committed.p_holm, prim.p_holm, check_dtype=False)
    pd.testing.assert_series_equal(committed.planned_mde, prim.planned_mde, check_dtype=False)


def test_chemistry_v1_verdicts_recomputed_from_its_committed_runs():
    """The earlier analogue (v1), which notebook 06 shows from its committed CSVs without re-running it."""
    runs = pd.read_csv(RESULTS_DIR / "chem_cpu_runs.csv")
    cal = chem_calibration.load_calibration(chem_calibration.calibration_path("cpu"))
    prim = chem_stats.primary_tests(runs, cal.planning_sd).set_index("task")
    committed = pd.read_csv(RESULTS_DIR / "chem_cpu_primary_test.csv").set_index("task")
    assert committed.verdict.to_dict() == prim.verdict.to_dict()
    pd.testing.assert_series_equal(committed.p_holm, prim.p_holm, check_dtype=False)


def test_creative_claim_verdicts_recomputed_from_the_committed_per_prompt_table():
    per_prompt = pd.read_csv(RESULTS_DIR / "creative_per_prompt.csv")
    committed = pd.read_csv(RESULTS_DIR / "creative_paired.csv")
    committed = committed[committed.kind == "MARA - control"].reset_index(drop=True)
    planned = pd.DataFrame({"claim": committed.method + " - " + committed.control, "metric": committed.metric,
                            "MDE": committed.mde, "paper (our scale)": committed.paper_effect})
    acted = committed.groupby("method").acted.first().astype(bool).to_dict()
    claims = cd.claim_comparisons(per_prompt, planned, acted, seed=0)
    want = [f"[{c.verdict}] {cd.claim_statement(c.method, c.control, c.metric)}" for c in claims.itertuples()]
    got = [s for s in printed_verdicts("07_creative_qa.ipynb") if "raises the" in s]
    assert got == want
    assert claims.verdict.tolist() == committed.verdict.tolist()
    assert claims.p_holm.to_numpy() == pytest.approx(committed.p_holm.to_numpy())


def test_onetwo_headline_verdicts_recomputed_from_the_committed_runs():
    runs = pd.read_csv(RESULTS_DIR / "onetwo_small_runs.csv")
    claims = onetwo_claims.headline_claims(runs, onetwo_claims.load_design(DATA_DIR / "onetwo_planning.json"))
    want = [f"[{c.verdict}] {c.statement}" for c in claims.itertuples()]
    statements = set(claims.statement)
    got = [s for s in printed_verdicts("05_one_two_task.ipynb") if s.split("] ", 1)[-1] in statements]
    assert got == want
    # each claim family's cell prints exactly its lines, the measured detail included
    texts = [t.rstrip("\n") for t in printed("05_one_two_task.ipynb")]
    for family in onetwo_claims.CLAIMS:
        assert onetwo_claims.report(claims, family) in texts, family
    # the headline is the whole grid: the paper's four betas, five seeds per arm
    assert sorted(runs.beta.unique()) == [0.001, 0.01, 0.02, 0.03]
    assert runs.groupby(["kl", "method", "beta"]).seed.nunique().min() >= 5


def test_other_numeric_paths_are_committed_and_tagged():
    """The native kernels' grid and design are committed; every per-run table of another path is
    tagged by kernels (and, on another CPU vendor, by vendor) and recorded in provenance.json."""
    prov = json.loads((RESULTS_DIR / "provenance.json").read_text())
    for stem in ("onetwo_small_runs", "naming_table1_runs"):
        tags = other_path_tags(stem)
        assert "native" in tags
        for t in tags:
            path = prov[f"{stem}_{t}.csv"]["numeric_path"]
            assert path.split()[2].startswith(t.split("-")[-1]), (stem, t, path)


@pytest.mark.parametrize("tag", other_path_tags("onetwo_small_runs"))
def test_onetwo_verdicts_on_another_numeric_path_recomputed_from_its_committed_runs(tag):
    """`make onetwo-paths` ran notebook 05's grid on the native kernels (and notebook 05 ran on another
    CPU vendor); each committed side-by-side table is exactly what the two committed per-run tables give."""
    from mdkl.checks import onetwo_paths

    got = onetwo_paths.compare_paths(pd.read_csv(RESULTS_DIR / "onetwo_small_runs.csv"),
                                     pd.read_csv(RESULTS_DIR / f"onetwo_small_runs_{tag}.csv"), tag)
    committed = pd.read_csv(RESULTS_DIR / f"onetwo_headlines_paths_{tag}.csv")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), committed, check_dtype=False)


@pytest.mark.parametrize("tag", other_path_tags("onetwo_small_runs"))
def test_onetwo_one_seed_swaps_recomputed_from_the_committed_runs(tag):
    """Does a headline hang on one seed? Each seed's runs swapped for the same seed's runs on another
    path (an independent replicate of the same configuration): the committed table is exactly what
    the two committed per-run tables give, and it says how many verdicts survive every swap."""
    from mdkl.checks import onetwo_paths

    got = onetwo_paths.swap_one_seed(pd.read_csv(RESULTS_DIR / "onetwo_small_runs.csv"),
                                     pd.read_csv(RESULTS_DIR / f"onetwo_small_runs_{tag}.csv"))
    committed = pd.read_csv(RESULTS_DIR / f"onetwo_headlines_swaps_{tag}.csv")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), committed, check_dtype=False)
    assert list(got.columns[3:8]) == [f"swap_{s}" for s in range(5)]
    assert set(got.level) == {"headline", "per beta"}
    assert (got.n_changed == got[[f"swap_{s}" for s in range(5)]].ne(got.verdict, axis=0).sum(axis=1)).all()


def test_onetwo_margins_recomputed_and_no_headline_contradicts_another_path():
    """Why notebook 05's headline verdicts differ between numeric paths: the committed margins table is
    exactly what the committed per-run tables give; no headline reads holds on one path and FAILS on
    another (nor in any one-seed swap); and every verdict that differs belongs to a claim whose pooled
    estimate sits nearer its boundary than one grid's units can resolve."""
    from mdkl.checks import onetwo_paths

    tables = onetwo_paths.replicate_tables()
    assert list(tables)[0] == "intel-pinned" and len(tables) >= 3
    got = onetwo_paths.margins(tables)
    committed = pd.read_csv(RESULTS_DIR / "onetwo_headlines_margins.csv")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), committed, check_dtype=False)
    assert not got.contradicts.any()
    differs = got[got.differs]
    assert len(differs) and (differs.units_needed > differs.units_per_grid).all()
    for tag in other_path_tags("onetwo_small_runs"):
        swaps = pd.read_csv(RESULTS_DIR / f"onetwo_headlines_swaps_{tag}.csv")
        head = swaps[swaps.level == "headline"].filter(regex="^(verdict|swap_)")
        assert not head.apply(onetwo_paths.contradicts, axis=1).any(), tag


def test_the_same_seed_on_two_paths_is_an_independent_replicate():
    """The premise of pooling the paths' grids: once each cell's mean is taken out, a seed's final
    entropy on one path does not repeat on another (a positive correlation would make the pooled
    intervals too narrow; measured -0.29 to -0.01 over the pairs of paths)."""
    from itertools import combinations

    from mdkl.checks import onetwo_paths

    for a, b in combinations(onetwo_paths.replicate_tables().values(), 2):
        assert onetwo_paths.within_cell_correlation(a, b) < 0.2


def test_pooled_replicates_measure_each_run_against_its_own_reference():
    """Pooling grids of several paths: each vanilla run's Remark 4.3 target is its own path's reference
    split; a replicate whose reference and final entropies shift together leaves the estimate unchanged."""
    from mdkl.checks import onetwo_paths

    design = onetwo_claims.load_design(DATA_DIR / "onetwo_planning.json")
    a = pd.read_csv(RESULTS_DIR / "onetwo_small_runs.csv")
    b = a.copy()
    van = b.method == "vanilla"
    q = a.loc[van, "target_p1"].iloc[0]
    b.loc[van, "target_p1"] = 0.9
    b.loc[van, "H"] += float(onetwo_claims.binary_entropy(0.9) - onetwo_claims.binary_entropy(q))
    one = onetwo_claims.headline_claims(a, design).set_index(["claim", "kl"])
    both = onetwo_claims.headline_claims(onetwo_paths.pool_replicates({"a": a, "b": b}), design).set_index(["claim", "kl"])
    for kl in ("reverse", "forward"):
        assert both.loc[("vanilla target", kl), "estimate"] == pytest.approx(one.loc[("vanilla target", kl), "estimate"])
        assert both.loc[("vanilla target", kl), "n_units"] == 2 * one.loc[("vanilla target", kl), "n_units"]
    with pytest.raises(ValueError, match="another design"):
        onetwo_paths.pool_replicates({"a": a, "b": b[b.seed != 0]})


def test_units_needed_inverts_the_equivalence_mde():
    from mdkl.checks.onetwo_paths import units_needed
    from mdkl.stats.verdicts import equivalence_mde

    for sd, d in [(0.07, 0.03), (0.49, 0.10), (0.12, 0.5)]:
        n = int(units_needed(sd, d))
        assert equivalence_mde(sd, n) <= d and (n == 2 or equivalence_mde(sd, n - 1) > d)
    assert units_needed(0.1, 0.0) == float("inf") and units_needed(1.0, 1e-6) == float("inf")
    with pytest.raises(ValueError, match="finite"):
        units_needed(float("nan"), 0.1)


@pytest.mark.parametrize("tag", other_path_tags("naming_table1_runs"))
def test_naming_table1_verdicts_on_another_numeric_path_recomputed_from_its_committed_runs(tag):
    """`make naming-paths` ran notebook 07's naming-task design on the native kernels (and notebook 07
    ran on another CPU vendor); each committed side-by-side table is exactly what the two committed
    per-run tables give."""
    from mdkl.checks import naming_paths

    got = naming_paths.compare_paths(pd.read_csv(RESULTS_DIR / "naming_table1_runs.csv"),
                                     pd.read_csv(RESULTS_DIR / f"naming_table1_runs_{tag}.csv"), tag)
    committed = pd.read_csv(RESULTS_DIR / f"naming_table1_paths_{tag}.csv")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), committed, check_dtype=False)


def test_path_tag_names_the_cpu_vendor_when_it_is_not_the_committed_one(monkeypatch):
    """Pinned kernels repeat bits only within a CPU vendor: on the committed results' vendor a path is
    'pinned' or 'native', on another it carries the vendor ('amd-pinned'), so its tables never
    overwrite the committed vendor's."""
    import mdkl.machine as machine
    from mdkl.checks import onetwo_paths

    vendor = onetwo_paths.committed_vendor()
    for cpu, kernels, tag in [(vendor, None, "pinned"), (vendor, "1", "native"),
                              ("AuthenticAMD", None, "amd-pinned"), ("AuthenticAMD", "1", "amd-native"),
                              ("HygonGenuine", "1", "hygongenuine-native")]:
        if cpu == "AuthenticAMD" and vendor == "AuthenticAMD":
            continue
        monkeypatch.setattr(machine, "cpu_model", lambda c=cpu: {"vendor": c, "model": "m", "machine": "x86_64"})
        if kernels is None:
            monkeypatch.delenv("MDKL_NATIVE_KERNELS", raising=False)
        else:
            monkeypatch.setenv("MDKL_NATIVE_KERNELS", kernels)
        assert onetwo_paths.path_tag() == tag
    with pytest.raises(ValueError, match="write_csv"):
        onetwo_paths.committed_vendor("no_such_result.csv")


def test_derived_tables_keep_their_provenance(tmp_path, monkeypatch):
    """A table computed from committed per-run tables alone keeps the provenance record it was
    committed with when re-derived on another machine; a new one takes its source's."""
    from mdkl import runtime
    from mdkl.checks import onetwo_paths

    prov = tmp_path / "provenance.json"
    prov.write_text(json.dumps({"runs.csv": {"numeric_path": "x86_64 GenuineIntel pinned-AVX2", "cpu_model": "A"},
                                "old.csv": {"numeric_path": "x86_64 AuthenticAMD pinned-AVX2", "cpu_model": "B"}}))
    monkeypatch.setattr(runtime, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(runtime, "PROVENANCE", prov)
    df = pd.DataFrame({"a": [1]})
    onetwo_paths.write_derived(df, "old", "runs.csv")
    onetwo_paths.write_derived(df, "new", "runs.csv")
    record = json.loads(prov.read_text())
    assert record["old.csv"]["cpu_model"] == "B" and record["new.csv"]["cpu_model"] == "A"
    assert (tmp_path / "new.csv").read_text() == "a\n1\n"
    with pytest.raises(ValueError, match="no entry"):
        onetwo_paths.write_derived(df, "x", "missing.csv")
