"""What notebook 06 shows a chemist (mdkl.chem.display: hits with their components, drift from the
prior, novelty, the RDKit grid) on hand-made run logs, and the bad input of Table 2's metrics that must
refuse with an error naming the fix (mismatched molecule and reward lists, NaN rewards, k < 1 in OB-k)."""

import math

import numpy as np
import pandas as pd
import pytest

from mdkl.chem import display
from mdkl.chem.metrics import ob100, summarize_run, yield_
from mdkl.chem.reward import RewardConfig, Scorer

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
HALOPERIDOL = "O=C(CCCN1CCC(CC1)(O)c2ccc(Cl)cc2)c3ccc(F)cc3"


# ---------------------------------------------------------------------------------------------
# metrics: bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("f", [yield_, ob100])
def test_metrics_refuse_mismatched_lists_and_nan_rewards(f):
    with pytest.raises(ValueError, match="3 molecules but 2 rewards: pass one reward per molecule"):
        f(["A", "B", "C"], [0.9, 0.9], 0.8)
    with pytest.raises(ValueError, match="1 reward.s. are NaN.*replace NaN by 0"):
        f(["A", "B"], [0.9, float("nan")], 0.8)


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_ob_k_needs_k_at_least_1(k):
    with pytest.raises(ValueError, match="use an integer k >= 1"):
        ob100(["A"], [0.9], 0.8, k=k)
    assert ob100(["A", "B"], [0.9, 0.9], 0.8, k=np.int64(2)) == 2.0


def test_summarize_run_refuses_a_log_with_nan_rewards():
    log = pd.DataFrame({"canonical": ["CCO", "CCN"], "reward": [0.9, np.nan]})
    with pytest.raises(ValueError, match="NaN"):
        summarize_run(log, 0.8)


# ---------------------------------------------------------------------------------------------
# display
# ---------------------------------------------------------------------------------------------
def _log(smiles, rewards, valid=None):
    n = len(smiles)
    return pd.DataFrame({"call": np.arange(1, n + 1), "smiles": smiles,
                         "canonical": [s if v else None for s, v in zip(smiles, valid or [True] * n)],
                         "reward": rewards, "valid": valid or [True] * n,
                         "logp_prior": -np.arange(1.0, n + 1), "logp_agent": -np.arange(1.0, n + 1) + 0.5})


def test_hit_table_takes_the_scorers_components_first_occurrence_only():
    with Scorer(RewardConfig(aggregator="geomean", potency_transform="logit_sigmoid", potency_floor=-2.0,
                             potency_ceiling=2.0), n_workers=1) as sc:
        smiles = [ASPIRIN, HALOPERIDOL, ASPIRIN, "C1CC"]
        res = sc.score(smiles)
        can = res["canonical"]
        log = _log(smiles, res["reward"], [c is not None for c in can]).assign(canonical=can)
        h = display.hit_table(log, sc, screen=1e-9)  # every valid molecule with a positive reward is a "hit"
        assert list(h.columns) == list(display.HIT_COLUMNS)
        assert h.call.tolist() == [i + 1 for i in range(2) if res["reward"][i] > 0]
        np.testing.assert_allclose(h[["potency", "qed", "hbd_ok", "synth"]].to_numpy(),
                                   res["components"][h.call.to_numpy() - 1])
        assert ((h.p_active >= 0) & (h.p_active <= 1)).all() and (h.sa > 1).all()
        assert display.hit_table(log, sc, screen=1.0).empty
        sc.reset()
        with pytest.raises(ValueError, match="right after run_rl"):
            display.hit_table(log, sc, screen=1e-9)
    with pytest.raises(ValueError, match="screen=0"):
        display.hit_table(log, sc, screen=0)
    with pytest.raises(ValueError, match="lacks columns"):
        display.hit_table(log.drop(columns="smiles"), sc)


def test_prior_drift_by_hand():
    log = _log(["CCO"] * 10, [0.0] * 10, [True] * 9 + [False])
    d = display.prior_drift(log, windows=2)
    assert d.call.tolist() == [5, 10]
    assert d.nll_prior.tolist() == [3.0, 7.5]  # (1+...+5)/5; the last window's invalid call is left out: (6+...+9)/4
    assert d.log_ratio.tolist() == [0.5, 0.5]
    f = display.drift_first_last(log, share=0.2)
    assert f == {"nll_prior_first": 1.5, "nll_prior_last": 9.0, "log_ratio_last": 0.5}
    with pytest.raises(ValueError, match="windows=11"):
        display.prior_drift(log, windows=11)
    with pytest.raises(ValueError, match="share=0.6"):
        display.drift_first_last(log, share=0.6)


def test_novelty_and_grid():
    assert display.novelty(["A", "B", "C", "D"], {"A", "X"}) == 0.75
    assert math.isnan(display.novelty([], {"A"}))
    with pytest.raises(ValueError, match="a set of canonical SMILES"):
        display.novelty(["A"], ["A"])
    img = display.hits_grid([ASPIRIN, HALOPERIDOL], ["a", "b"], per_row=2, size=(100, 80))
    assert img.size == (200, 80)
    assert display.hits_grid([], []) is None
    with pytest.raises(ValueError, match="one legend per molecule"):
        display.hits_grid([ASPIRIN], [])
    with pytest.raises(ValueError, match="does not parse"):
        display.hits_grid(["C1CC"], ["x"])
