"""The 1-2 experiment's bookkeeping (mdkl.tasks.onetwo_runs): arm configs, the split KL, run summaries
(means of the last checkpoints, reward collapses, MARA's activity) and per-arm tables."""

import math

import pandas as pd
import pytest

from mdkl.tasks import onetwo_runs
from mdkl.lm import LMConfig, LMResult


def test_arm_config_sets_direction_placement_and_mara():
    base = LMConfig(kl_level="sequence", tau=1.0)
    c = onetwo_runs.arm_config(base, "forward", "MARA", 0.03, 4)
    assert (c.kl, c.kl_placement, c.mara, c.beta, c.seed, c.mara_algorithm) == ("forward", "loss", "auto", 0.03, 4, "alg2")
    c = onetwo_runs.arm_config(base, "reverse", "vanilla", 0.001, 0)
    assert (c.kl_placement, c.mara, c.estimator) == ("reward", "none", "k1")
    with pytest.raises(ValueError, match="vanilla"):
        onetwo_runs.arm_config(base, "reverse", "mara", 0.01, 0)


def test_successor_arms_configs_and_names():
    base = LMConfig(kl_level="sequence", tau=1.0)
    for name in onetwo_runs.SUCCESSOR_ARMS:
        kl = "none" if name == "FlowRL" else "reverse"
        c = onetwo_runs.arm_config(base, kl, name, 0.03, 2)
        assert onetwo_runs.method_of(c) == name and c.mara == "none" and (c.beta, c.seed) == (0.03, 2)
        c.shaping  # a valid shaping config
    ds = onetwo_runs.arm_config(base, "reverse", "DS", 0.03, 0)
    assert (ds.successor, ds.gamma_p, ds.estimator) == ("diff_smooth", None, "k1")
    # UCPO keeps only the correct samples' summed advantage: its KL is a loss (k2), not inside the reward
    u = onetwo_runs.arm_config(base, "reverse", "UCPO raw", 0.03, 0)
    assert (u.estimator, u.ucpo_length_norm, u.ucpo_tau) == ("k2", False, 0.2)
    f = onetwo_runs.arm_config(base, "none", "FlowRL", 0.03, 0)
    assert (f.kl, f.advantage, f.estimator, f.successor) == ("none", "grpo", None, "flowrl")
    with pytest.raises(ValueError, match="kl='none'"):
        onetwo_runs.arm_config(base, "reverse", "FlowRL", 0.03, 0)
    with pytest.raises(ValueError, match="'reverse' or 'forward'"):
        onetwo_runs.arm_config(base, "none", "DS", 0.03, 0)
    assert onetwo_runs.method_of(base.replace(successor="ips", ips_alpha=0.25)) == "ips"


def test_split_kl():
    assert onetwo_runs.split_kl(0.5, 0.5) == 0.0
    assert abs(onetwo_runs.split_kl(0.95, 0.5) - (0.95 * math.log(1.9) + 0.05 * math.log(0.1))) < 1e-12
    assert onetwo_runs.split_kl(1.0, 0.95) == pytest.approx(-math.log(0.95))
    assert onetwo_runs.split_kl(0.5, 1.0) == math.inf


def _result(seed, p1s, rewards, mara="none", grad=0.4):
    cfg = LMConfig(mara=mara, tau=1.0, seed=seed, steps=len(rewards))
    ck = pd.DataFrame({"step": range(len(p1s)), "p1_valid_exact": p1s, "reward": [1.0] * len(p1s),
                       "valid_entropy_exact": [0.1] * len(p1s), "valid_exact": [0.9] * len(p1s)})
    h = pd.DataFrame({"reward": rewards, "mara_anchored": [10] * len(rewards), "mara_changed": [3] * len(rewards),
                      "loss": [0.5] * len(rewards), "grad_norm": [grad] * len(rewards)})
    return LMResult(cfg, h, ck, seconds=1.0)


def test_run_summary_and_arm_table():
    a = onetwo_runs.run_summary(_result(0, [0.9, 0.5, 0.96, 0.94], [1.0] * 20), 0.95, last=2)
    assert a["p1_valid"] == pytest.approx(0.95) and a["kl_to_target"] == pytest.approx(0.0, abs=1e-12)
    assert not a["reward_collapse"] and a["method"] == "vanilla"
    b = onetwo_runs.run_summary(_result(1, [0.9, 0.99, 0.99], [1.0] * 18 + [0.0, 0.0]), 0.95, last=2)
    assert b["reward_collapse"] and b["min_batch_reward"] == 0.0  # last 10% of steps average 0
    m = onetwo_runs.run_summary(_result(2, [0.5, 0.5], [1.0] * 10, mara="auto"), 0.5, last=1)
    assert m["method"] == "MARA" and m["mara_changed"] == 3
    # the claims' columns: the window before the last, the hypervolume after step 0, the start reward
    assert a["H_prev"] == pytest.approx(0.1) and a["reward_start"] == 1.0
    assert a["hv"] == pytest.approx(1.0 * 0.1)  # checkpoints at (reward 1, H 0.1) dominate 1 x 0.1
    t = onetwo_runs.arm_table(pd.DataFrame([a, b]))
    assert len(t) == 1 and t.runs[0] == 2 and t.reward_collapses[0] == 1 and t.numeric_failures[0] == 0
    # numeric failure: a pre-clip gradient norm above 1e3 x the clip (mdkl.numerics), with its reason
    assert not a["numeric_failure"] and a["failure_reason"] == "" and a["grad_norm_max"] == 0.4
    f = onetwo_runs.run_summary(_result(3, [0.9, 0.9], [1.0] * 10, grad=2e3), 0.95, last=1)
    assert f["numeric_failure"] and "grad norm > 1e+03" in f["failure_reason"] and f["loss_max_abs"] == 0.5
    tf = onetwo_runs.arm_table(pd.DataFrame([a, {**f, "p1_valid": 0.0}]))
    assert tf.numeric_failures[0] == 1 and tf.runs[0] == 2 and tf.p1_valid[0] == pytest.approx(a["p1_valid"])  # not averaged in
    # p1 = 0.95 and 0.99: mean 0.97, sd 0.04 / sqrt(2), SE = sd / sqrt(2) = 0.02
    assert t.p1_valid[0] == pytest.approx(0.97) and t.p1_valid_se[0] == pytest.approx(0.02)
