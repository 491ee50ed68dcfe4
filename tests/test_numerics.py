"""mdkl.numerics.numeric_failure: a run whose loss or pre-clip gradient norm left its bound is flagged."""

import math
from pathlib import Path

import pandas as pd
import pytest

from mdkl.numerics import GRAD_NORM_FACTOR, LOSS_BOUND, numeric_failure

# notebook 07's SmolLM2 rows before the bounded option (MARA (fwd) = Algorithm 2 as stated), kept for this test
HISTORY = Path(__file__).resolve().parents[1] / "data" / "results" / "creative_training_history_alg2_importance.csv"


def test_the_creative_rows():
    """Table 1's creative-task runs (SmolLM2, clip 1.0): only the unnormalized forward MARA row failed."""
    h = pd.read_csv(HISTORY)
    verdicts = {(m, s): numeric_failure(g) for (m, s), g in h.groupby(["method", "seed"])}
    failed = {k for k, v in verdicts.items() if v}
    assert failed and {m for m, _ in failed} == {"MARA (fwd)"}
    v = next(v for k, v in verdicts.items() if k[0] == "MARA (fwd)")
    assert v.label == "numerically failed" and v.n_bad >= 7 and "grad norm" in v.reason
    healthy = h[h["method"] != "MARA (fwd)"]
    # the bound sits well above every healthy value (module docstring: 14x, 2e4x)
    assert healthy["grad_norm"].max() * 10 < GRAD_NORM_FACTOR and healthy["loss"].abs().max() * 1e3 < LOSS_BOUND


def test_bounds_and_inputs():
    ok = [{"step": i + 1, "loss": 0.5, "grad_norm": 3.0} for i in range(5)]
    v = numeric_failure(ok)
    assert not v and v.reason == "" and v.first_bad_step is None and v.label == "ok"
    for bad in ({"loss": math.nan}, {"grad_norm": math.inf}, {"grad_norm": 2e3}, {"loss": -2e6}):
        rows = [dict(r) for r in ok]
        rows[3].update(bad)
        v = numeric_failure(rows)
        assert v and v.n_bad == 1 and v.first_bad_step == 4, bad
    assert not numeric_failure({"loss": [1.0], "grad_norm": [2e3]}, max_grad_norm=5.0)  # bound scales with the clip
    with pytest.raises(ValueError, match="grad_norm"):
        numeric_failure(pd.DataFrame({"loss": [1.0]}))
    with pytest.raises(ValueError, match="max_grad_norm"):
        numeric_failure(ok, max_grad_norm=0)


def test_an_unclipped_trainer_is_judged_against_its_own_median_step():
    """REINVENT applies no clip: max_grad_norm=None compares each step with the run's median norm."""
    norms = [0.0, 4e3, 5.5e3, 6e3, 7e3, 8e3]  # a first step with no reward signal has no gradient
    ok = {"loss": [1e3] * 6, "grad_norm": norms}
    assert not numeric_failure(ok, max_grad_norm=None)  # 1e3 x clip 1 would flag every step
    assert numeric_failure(ok)
    runaway = {"loss": [1e3] * 6, "grad_norm": norms[:-1] + [6e3 * 1e3 * 1.01]}
    v = numeric_failure(runaway, max_grad_norm=None)
    assert v and v.n_bad == 1 and "the run's median 6e+03" in v.reason
    assert not numeric_failure({"loss": [0.0, 0.0], "grad_norm": [0.0, 0.0]}, max_grad_norm=None)  # never moved
    assert numeric_failure({"loss": [1.0, math.nan], "grad_norm": [0.0, 1.0]}, max_grad_norm=None)
