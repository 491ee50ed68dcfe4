"""Table 1's design (mdkl.tasks.creative_design): each row's regularizer and effective beta, the matched
controls, the MARA-activity prediction against closed forms and against the shaping path, the
trainer's per-step count of changed rewards, and the bad inputs of the creative task (a group with
no sample above tau, a prompt file without a test split)."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mdkl import lm
from mdkl.lm import smalllm
from mdkl.tasks import creative, creative_design as cd, onetwo
from mdkl.shaping import ShapingConfig, shape_rewards

BASE = lm.LMConfig(model="smollm2", beta=0.05, group_size=4, prompts_per_step=4, lora_r=8, reward_floor=1.0)


# ---------------------------------------------------------------------------------------------
# rows, regularizers, effective beta
# ---------------------------------------------------------------------------------------------
def test_every_row_is_a_valid_config_and_mara_rows_have_matched_controls():
    cfgs = {n: BASE.replace(**c) for n, c in cd.TABLE1_ROWS.items()}
    for c in cfgs.values():
        lm.validate_config(c)
    for mara, ctl in cd.MATCHED_CONTROL.items():
        a, b = cd.TABLE1_ROWS[mara], cd.TABLE1_ROWS[ctl]
        same = {k: v for k, v in a.items() if k not in ("mara", "tau_percentile", "tau_scope")}
        assert same == b  # the control is the MARA row without MARA
    assert cd.regularizer(cfgs["RLOO + k3"]) == "k3 loss per token (forward KL)"
    assert cd.regularizer(cfgs["RLOO"]) == "k1 in the reward (reverse KL)"
    assert cd.regularizer(cfgs["MARA (fwd)"]).startswith("k3 loss per token (forward KL); MARA Alg. 2, tau = ")
    assert "entropy bonus eta = 0.01" in cd.regularizer(cfgs["Entropy"])
    assert cd.regularizer(BASE.replace(kl="none")) == "no KL"


def test_effective_beta_by_hand():
    assert cd.effective_beta(0.05, "rloo", 0.3) == 0.05
    assert cd.effective_beta(0.05, "grpo", 0.3, eps=0.0) == pytest.approx(0.015)
    assert math.isnan(cd.effective_beta(0.05, "bon", 0.3))
    # matched: GRPO's beta / sd gives the RLOO row's effective beta back
    b = cd.matched_beta(0.05, "grpo", 0.25, eps=0.0)
    assert b == pytest.approx(0.2) and cd.effective_beta(b, "grpo", 0.25, eps=0.0) == pytest.approx(0.05)
    assert cd.target_tilt(0.05, 0.29) == pytest.approx(5.8)
    with pytest.raises(ValueError, match="unknown advantage"):
        cd.effective_beta(0.05, "ppo", 0.3)
    with pytest.raises(ValueError, match="reward_group_sd"):
        cd.effective_beta(0.05, "grpo", float("nan"))
    with pytest.raises(ValueError, match="> 0"):
        cd.matched_beta(0.05, "grpo", 0.0)


def test_row_table_states_regularizer_beta_and_control():
    cfgs = {n: BASE.replace(**cd.TABLE1_ROWS[n]) for n in ("GRPO", "RLOO", "MARA (rev)", "BoN training")}
    t = cd.row_table(cfgs, {"GRPO": 0.2, "RLOO": 0.25, "MARA (rev)": 0.25, "BoN training": 0.3})
    assert t.loc["GRPO", "effective_beta"] == pytest.approx(0.05 * (0.2 + 1e-4))
    assert t.loc["RLOO", "beta_per_sd"] == pytest.approx(0.2)
    assert t.loc["MARA (rev)", "control"] == "RLOO" and t.loc["BoN training", "advantage"] == "bon"
    assert t.loc["GRPO", "regularizer"] == "k3 loss per token (forward KL)"
    assert cd.row_table({"none": BASE.replace(kl="none")}, 0.3).loc["none", "beta"] == 0.0
    assert cd.group_reward_sd(pd.DataFrame({"reward_group_sd": [0.2, 0.4]})) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="re-run the row"):
        cd.group_reward_sd(pd.DataFrame({"reward": [5.0]}))


# ---------------------------------------------------------------------------------------------
# how often MARA acts
# ---------------------------------------------------------------------------------------------
def test_changed_count_by_hand():
    good = np.array([[[1, 1, 0, 1], [0, 0, 0, 0]], [[1, 0, 0, 0], [1, 1, 0, 0]]], dtype=bool)  # 2 steps
    assert cd.mara_changed_count(good).tolist() == [2, 1]
    with pytest.raises(ValueError, match="P, G"):
        cd.mara_changed_count([True, False])


@pytest.mark.parametrize("alg", ["alg1", "alg2"])
@pytest.mark.parametrize("scope", ["group", "batch"])
def test_changed_count_is_what_the_shaping_path_changes(alg, scope):
    """On random continuous batches the samples shape_rewards changes are all good samples but each
    group's anchor: mara_changed_count of the good set."""
    gen = torch.Generator().manual_seed(0)
    P, G = 5, 6
    kl = dict(kl="reverse", kl_placement="reward") if alg == "alg1" else dict(kl="forward", kl_placement="loss")
    cfg = ShapingConfig(beta=0.1, mara=alg, tau_percentile=70.0, tau_scope=scope, **kl)
    grp = torch.arange(P).repeat_interleave(G)
    for _ in range(20):
        r = torch.randn(P * G, generator=gen, dtype=torch.float64) + torch.randn(P, generator=gen).repeat_interleave(G)
        lp, lref = torch.zeros(P * G, dtype=torch.float64), torch.randn(P * G, generator=gen, dtype=torch.float64)
        shaped, lref_kl, anchored = shape_rewards(cfg, r, lp, lref, grp)
        base, _, _ = shape_rewards(cfg.replace(mara="none"), r, lp, lref, grp)
        changed = (shaped != base) | (lref_kl != lref)
        assert int(changed.sum()) == int(cd.mara_changed_count(anchored.view(P, G).numpy()))


@pytest.mark.parametrize("G, q, per_group", [(4, 90, 0), (8, 90, 0), (16, 90, 1), (4, 50, 1), (8, 75, 1),
                                              (16, 75, 3)])
def test_group_scope_activity_is_the_closed_form(G, q, per_group):
    """Per-group percentile: G - ceil(q (G - 1) / 100) good samples in every group, one of them the anchor."""
    assert per_group == max(G - math.ceil(q * (G - 1) / 100) - 1, 0)
    a = cd.expected_mara_activity([0.0, 1.0, 3.0], [0.3, 1.0, 0.1], G, 3, q, "group", n_steps=200)
    assert a["changed_per_step"] == 3 * per_group
    assert a["steps_without_change"] == (1.0 if per_group == 0 else 0.0)


def test_batch_scope_activity_by_hand():
    """Two prompts with constant rewards 0 and 1, G = 4, P = 2, batch 90th percentile: distinct
    prompts (prob 1/2): tau = 1, one good group, 3 changed; the same prompt twice: all 8 equal and
    good, 6 changed. Expected 4.5; never a step without change."""
    a = cd.expected_mara_activity([0.0, 1.0], [0.0, 0.0], 4, 2, 90.0, "batch", n_steps=20000, seed=1)
    assert a["changed_per_step"] == pytest.approx(4.5, abs=0.05)
    assert a["steps_without_change"] == 0.0 and a["groups_acted_share"] == pytest.approx(0.75, abs=0.01)
    # one prompt per step: the batch is the group, both scopes agree
    kw = dict(prompt_mean=[0.0, 0.5], prompt_sd=[1.0, 0.2], group_size=16, prompts_per_step=1, n_steps=300)
    assert cd.expected_mara_activity(tau_scope="batch", **kw) == cd.expected_mara_activity(tau_scope="group", **kw)


def test_activity_bad_input_and_spreads_from_samples():
    with pytest.raises(ValueError, match="one value per prompt"):
        cd.expected_mara_activity([0.0, 1.0], [0.1], 4, 2)
    with pytest.raises(ValueError, match="sds >= 0"):
        cd.expected_mara_activity([0.0], [-0.1], 4, 2)
    with pytest.raises(ValueError, match="tau_scope"):
        cd.expected_mara_activity([0.0], [0.1], 4, 2, tau_scope="prompt")
    with pytest.raises(ValueError, match="group_size"):
        cd.expected_mara_activity([0.0], [0.1], 1, 2)
    s = pd.DataFrame({"prompt_id": [0, 0, 1, 1, 0, 0], "method": ["Base"] * 4 + ["RLOO"] * 2,
                      "r_in": [1.0, 3.0, 5.0, 5.0, 9.0, 9.0]})
    sp = cd.prompt_reward_spreads(s)
    assert sp["mean"].tolist() == [2.0, 5.0] and sp["sd"].tolist() == pytest.approx([math.sqrt(2), 0.0])
    with pytest.raises(ValueError, match="no samples of method"):
        cd.prompt_reward_spreads(s, "GRPO")
    with pytest.raises(ValueError, match=">= 2 finite"):
        cd.prompt_reward_spreads(s.iloc[:3])


def test_committed_samples_make_the_batch_percentile_inert_and_the_group_percentile_act():
    """With the committed base model's spreads (90 test prompts x k = 5): the first table's design (G = 4,
    P = 4, batch 90th percentile) changes well under one reward per step and none in a third of the
    steps; the committed design (G = 8, P = 2, per-group 75th percentile) changes one per group, always."""
    s = pd.read_csv(creative.DATA_DIR / "results" / "creative_table1_samples.csv")
    sp = cd.prompt_reward_spreads(s)
    old = cd.expected_mara_activity(sp["mean"], sp["sd"], 4, 4, 90.0, "batch")
    assert old["changed_per_step"] < 0.7 and old["steps_without_change"] > 0.3
    new = cd.expected_mara_activity(sp["mean"], sp["sd"], 8, 2, 75.0, "group")
    assert new["changed_per_step"] == 2.0 and new["steps_without_change"] == 0.0


# ---------------------------------------------------------------------------------------------
# the trainer logs what MARA changed; bad input
# ---------------------------------------------------------------------------------------------
def test_trainer_logs_mara_changes_and_the_group_reward_sd():
    tiny = smalllm.SmallLMConfig(n_docs=200, steps=5, hidden_size=16, n_layers=1, n_heads=2, intermediate_size=32,
                                 vocab_size=280, batch_size=8, max_len=48)
    model, tok = smalllm.load_small_lm(tiny, progress=False)

    class Ranked(onetwo.OneTwoTask):
        def rewards(self, completions):  # distinct rewards, rising within each group
            return torch.arange(len(completions), dtype=torch.float64) / 10

    cfg = lm.LMConfig(group_size=4, prompts_per_step=3, max_new_tokens=4, steps=2, eval_samples=0, beta=0.05,
                      mara="auto", tau_percentile=50.0)
    h = lm.train(cfg, Ranked(), copy.deepcopy(model), tok, progress=False).history
    # 50th percentile of 4 distinct rewards: 2 good per group, 1 changed per group
    assert h.mara_anchored.tolist() == [6, 6] and h.mara_changed.tolist() == [3, 3]
    assert h.reward_group_sd.tolist() == pytest.approx([np.std([0, 0.1, 0.2, 0.3], ddof=1)] * 2)
    h0 = lm.train(cfg.replace(mara="none"), Ranked(), copy.deepcopy(model), tok, progress=False).history
    assert h0.mara_changed.tolist() == [0, 0]


def test_batch_scope_group_with_no_sample_above_tau_is_unchanged():
    r = torch.tensor([0.1, 0.2, 0.3, 0.4, 5.0, 6.0, 7.0, 8.0], dtype=torch.float64)
    lp, lref = torch.zeros(8, dtype=torch.float64), torch.tensor([-1.0, -2, -3, -4, -4, -3, -2, -1]).double()
    grp = torch.arange(2).repeat_interleave(4)
    for kl in (dict(kl="reverse", kl_placement="reward"), dict(kl="forward", kl_placement="loss")):
        cfg = ShapingConfig(beta=0.1, mara="auto", tau_percentile=60.0, tau_scope="batch", **kl)
        shaped, lref_kl, anchored = shape_rewards(cfg, r, lp, lref, grp)
        base, *_ = shape_rewards(cfg.replace(mara="none"), r, lp, lref, grp)
        assert not anchored[:4].any() and anchored[4:].any()
        assert torch.equal(shaped[:4], base[:4]) and torch.equal(lref_kl[:4], lref[:4])


def test_prompt_file_without_a_test_split_names_the_fix(tmp_path):
    p = tmp_path / "prompts.csv"
    pd.DataFrame([("a0", "train", "name", "Name a cat.")], columns=["id", "split", "category", "prompt"]).to_csv(
        p, index=False)
    with pytest.raises(ValueError, match="add rows with split='test'"):
        creative.CreativeTask(split="test", csv=str(p)).questions()
    with pytest.raises(ValueError, match="use 'train' or 'test'"):
        creative.load_prompts("dev", path=p)


def test_empty_generations_and_all_equal_rewards():
    """Empty answers: the out-of-distribution scorer's fixed floor (the judge's is 1, tested on the
    real model in test_creative); all-equal group rewards: zero advantages, MARA keeps them equal."""
    sc = creative.EmbeddingScorer(lambda t: np.eye(8)[[hash(x) % 8 for x in t]])
    assert sc.score(["q", "q"], ["", "  "]).tolist() == [creative.EMPTY_OOD_REWARD] * 2
    r = torch.full((8,), 1.0, dtype=torch.float64)
    grp = torch.arange(2).repeat_interleave(4)
    cfg = ShapingConfig(beta=0.1, kl="forward", kl_placement="loss", mara="auto", tau_percentile=90.0,
                        tau_scope="batch")
    shaped, _, anchored = shape_rewards(cfg, r, torch.zeros(8).double(), -torch.arange(8.0).double(), grp)
    assert torch.equal(shaped, r) and anchored.all()


def test_claims_pair_each_mara_row_with_its_matched_control_and_the_paper_numbers():
    assert {(m, c) for m, c, _, _ in cd.CLAIMS} == set(cd.MATCHED_CONTROL.items())
    assert set(cd.CLAIM_ROWS) == {"Base", *cd.MATCHED_CONTROL, *cd.MATCHED_CONTROL.values()}
    assert set(cd.TABLE_ORDER) == {"Base", "Ensemble", *cd.TABLE1_ROWS}
    assert cd.paper_difference("RLOO", "MARA (fwd)", "r_out") == pytest.approx(0.324)
    assert cd.paper_difference("RLOO", "MARA (rev)", "n_distinct") == pytest.approx(0.26)
    with pytest.raises(ValueError, match="not in the paper's Table 1"):
        cd.paper_difference("RLOO + k3", "MARA (fwd)", "r_out")
    with pytest.raises(ValueError, match="unknown metric"):
        cd.paper_difference("RLOO", "MARA (fwd)", "reward")
    # the MARA rows act in every group: per-group 75th percentile of G = 8 -> one changed reward per group
    for m in cd.MATCHED_CONTROL:
        c = BASE.replace(group_size=8, **cd.TABLE1_ROWS[m])
        assert (c.tau_scope, c.tau_percentile) == ("group", 75.0)
        a = cd.expected_mara_activity([5.0, 6.0], [0.3, 0.3], c.group_size, 2, c.tau_percentile, c.tau_scope,
                                      n_steps=50)
        assert a["changed_per_step"] == 2.0 and a["steps_without_change"] == 0.0


def test_prompt_ids_key_every_subset_by_the_csv_id():
    full = creative.CreativeTask(split="test")
    sub = creative.CreativeTask(split="test", n_prompts=18)
    ids, qs = dict(zip(full.prompt_ids(), full.questions())), dict(zip(sub.prompt_ids(), sub.questions()))
    assert len(ids) == 90 and len(qs) == 18 and all(ids[i] == q for i, q in qs.items())
    cats = creative.load_prompts("test").set_index("id").loc[sub.prompt_ids(), "category"]
    assert cats.value_counts().tolist() == [3] * 6  # evenly spaced: 3 prompts of each category


def test_evaluate_policy_needs_two_samples_per_prompt():
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        creative.evaluate_policy(None, None, creative.CreativeTask(split="test", n_prompts=2), 1, 8)


def _per_prompt(effect=0.1, n=60, seeds=(0, 1), control_rise=1.0):
    rng = np.random.default_rng(0)
    rows = []
    for s in seeds:
        for i in range(n):
            base = {c: rng.normal(0.5, 0.1) for c in ("r_in", "r_out", "ead", "n_distinct")}
            for m in ("Base", "RLOO", "RLOO + k3", "MARA (rev)", "MARA (fwd)"):
                v = dict(base)
                if m != "Base":
                    v["r_in"] += control_rise + rng.normal(0, 0.05)
                if m.startswith("MARA"):
                    for c in ("r_out", "ead", "n_distinct"):
                        v[c] += effect + rng.normal(0, 0.02)
                rows.append({"method": m, "seed": s, "prompt_id": f"p{i:03d}", **v})
    return pd.DataFrame(rows)


def _planned(mde=0.05, paper=0.1):
    return pd.DataFrame([{"claim": f"{m} - {c}", "metric": col, "MDE": mde, "paper (our scale)": paper}
                         for m, c, col, _ in cd.CLAIMS])


def test_claim_comparisons_apply_the_rule_set_with_the_planned_mde():
    acted = {"MARA (rev)": True, "MARA (fwd)": True}
    out = cd.claim_comparisons(_per_prompt(), _planned(), acted)
    assert out.verdict.tolist() == ["holds"] * 6 and (out.p_holm >= out.p).all()
    assert set(cd.claim_comparisons(_per_prompt(effect=0.03), _planned(), acted).verdict) == {
        "holds, smaller than the paper's"}
    assert set(cd.claim_comparisons(_per_prompt(), _planned(mde=0.2), acted).verdict) == {"not tested (underpowered)"}
    assert set(cd.claim_comparisons(_per_prompt(control_rise=0.0), _planned(), acted).verdict) == {
        "not tested (control did not train)"}
    out = cd.claim_comparisons(_per_prompt(), _planned(), {"MARA (rev)": False, "MARA (fwd)": True})
    assert set(out[out.method == "MARA (rev)"].verdict) == {"not tested (did not act)"}
    one = cd.claim_comparisons(_per_prompt(seeds=(0,)), _planned(), acted)
    assert set(one.verdict) == {cd.ONE_SEED}  # one training seed: two checkpoints, not two methods
    assert cd.claim_statement("MARA (rev)", "RLOO", "ead") == "MARA (rev) raises the n-gram EAD over RLOO"
    with pytest.raises(ValueError, match="acted has no entry"):
        cd.claim_comparisons(_per_prompt(), _planned(), {"MARA (rev)": True})
    with pytest.raises(ValueError, match="planned lacks"):
        cd.claim_comparisons(_per_prompt(), _planned().drop(columns="MDE"), acted)
    with pytest.raises(ValueError, match="metric="):
        cd.claim_statement("MARA (rev)", "RLOO", "bleu")
