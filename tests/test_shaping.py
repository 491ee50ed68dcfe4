"""The shared shaping path (mdkl.shaping): group advantages vs hand computation, the KL placement
table and its override, MARA per group (Alg. 1 / 2, fixed or percentile tau), entropy and Unlikely
in the reward, the policy loss at sequence and token level, and the configuration errors (GRPO
advantages with MARA or k1 in the reward)."""

import pytest
import torch

from mdkl.kl import k1, k2, k3
from mdkl.mara import mara_rewards, mara_substitute
from mdkl.shaping import (ShapingConfig, advantages, group_advantages, kl_estimator_for, policy_loss,
                          shape_rewards)


def _groups(n, size):
    return torch.arange(n // size).repeat_interleave(size)


def test_rloo_and_grpo_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 3.0], dtype=torch.float64)
    a = group_advantages(r, _groups(r.numel(), 4), "rloo")
    # group 1: r - mean of the other three
    assert a[:4].tolist() == pytest.approx([1 - 2 / 3, 0 - 1, 1 - 2 / 3, 1 - 2 / 3])
    assert a[4:].tolist() == pytest.approx([-1, -1, -1, 3])
    g = group_advantages(r, _groups(r.numel(), 4), "grpo", eps=0.0)
    m, s = 0.75, torch.tensor([1.0, 0, 1, 1]).std().item()
    assert g[:4].tolist() == pytest.approx([(1 - m) / s, (0 - m) / s, (1 - m) / s, (1 - m) / s])
    assert group_advantages(r, _groups(r.numel(), 4), "mean")[:4].tolist() == pytest.approx([0.25, -0.75, 0.25, 0.25])


def test_zero_variance_groups_get_zero_advantage():
    r = torch.ones(8, dtype=torch.float64)
    for kind in ("rloo", "grpo", "mean"):
        assert torch.equal(group_advantages(r, _groups(r.numel(), 4), kind), torch.zeros(8, dtype=torch.float64))


def test_advantage_bad_input():
    with pytest.raises(ValueError, match="one integer group id per sample"):
        group_advantages(torch.zeros(8), torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 2 samples per group"):
        group_advantages(torch.zeros(4), torch.arange(4))
    with pytest.raises(ValueError, match="unknown advantage"):
        group_advantages(torch.zeros(4), _groups(4, 2), "ppo")
    with pytest.raises(ValueError, match="repeat_interleave"):
        group_advantages(torch.zeros(2, 4), _groups(8, 4))


def test_advantage_none_is_the_raw_reward_and_mean_allows_single_samples():
    r = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    assert torch.equal(group_advantages(r, torch.arange(3), "none"), r)
    assert torch.equal(group_advantages(r, torch.arange(3), "mean"), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["mean", "rloo", "grpo"])
def test_unordered_unequal_groups_equal_the_grouped_computation(kind):
    """Ids need not be consecutive nor groups equal-sized: each group's advantages are those of
    its own samples computed alone (the toy's [n_seeds, batch] and the LM's consecutive groups are
    the special case of equal consecutive blocks)."""
    gen = torch.Generator().manual_seed(0)
    r = torch.rand(11, generator=gen, dtype=torch.float64)
    g = torch.tensor([2, 0, 2, 1, 0, 2, 1, 0, 2, 1, 0])
    got = group_advantages(r, g, kind)
    for k in range(3):
        s = g == k
        want = group_advantages(r[s], torch.zeros(int(s.sum()), dtype=torch.long), kind)
        torch.testing.assert_close(got[s], want, rtol=0, atol=1e-12)


def test_toy_rows_and_lm_groups_are_the_same_call():
    r = torch.rand(3, 5, dtype=torch.float64)
    rows = group_advantages(r.flatten(), _groups(15, 5), "rloo").view(3, 5)
    want = r - (r.sum(1, keepdim=True) - r) / 4
    assert torch.equal(rows, want)


def _batch(seed=0, n_groups=3, g=4):
    gen = torch.Generator().manual_seed(seed)
    r = (torch.rand(n_groups * g, generator=gen) > 0.4).double()
    lp = -torch.rand(n_groups * g, generator=gen, dtype=torch.float64) * 5
    lref = -torch.rand(n_groups * g, generator=gen, dtype=torch.float64) * 5
    return r, lp, lref, torch.arange(n_groups).repeat_interleave(g)


def test_estimator_mapping_and_errors():
    assert ShapingConfig(kl="reverse", kl_placement="reward").estimator == "k1"
    assert ShapingConfig(kl="reverse", kl_placement="loss").estimator == "k2"
    assert ShapingConfig(kl="forward", kl_placement="loss").estimator == "k3"
    assert ShapingConfig(kl="none").estimator is None and ShapingConfig(beta=0.0).estimator is None
    with pytest.raises(ValueError, match="forward\\+loss"):
        ShapingConfig(kl="forward", kl_placement="reward").estimator
    assert ShapingConfig(kl="reverse", mara="auto", tau=1.0).mara_algorithm == "alg1"
    assert ShapingConfig(kl="forward", kl_placement="loss", mara="auto", tau=1.0).mara_algorithm == "alg2"


def test_reverse_k1_sits_in_the_reward():
    r, lp, lref, grp = _batch()
    cfg = ShapingConfig(beta=0.1, kl="reverse", kl_placement="reward")
    shaped, lref_kl, _ = shape_rewards(cfg, r, lp, lref, grp)
    assert torch.allclose(shaped, r - 0.1 * k1(lp, lref))
    assert torch.equal(lref_kl, lref)
    # its loss has no KL term: only REINFORCE
    lpg = lp.clone().requires_grad_()
    adv = group_advantages(shaped, _groups(shaped.numel(), 4))
    assert torch.allclose(policy_loss(cfg, lpg, lref_kl, adv), -(adv * lp).mean())


@pytest.mark.parametrize("kl,placement,est", [("reverse", "loss", k2), ("forward", "loss", k3)])
def test_kl_losses_are_k2_and_k3(kl, placement, est):
    r, lp, lref, grp = _batch(1)
    cfg = ShapingConfig(beta=0.2, kl=kl, kl_placement=placement, kl_level="sequence")
    shaped, lref_kl, _ = shape_rewards(cfg, r, lp, lref, grp)
    assert torch.equal(shaped, r)  # nothing in the reward
    adv = group_advantages(shaped, _groups(shaped.numel(), 4))
    got = policy_loss(cfg, lp, lref_kl, adv)
    assert torch.allclose(got, -(adv * lp).mean() + 0.2 * est(lp, lref).mean())


def test_token_level_kl_sums_per_token_estimator():
    gen = torch.Generator().manual_seed(3)
    tlp, tref = -torch.rand(4, 5, generator=gen, dtype=torch.float64), -torch.rand(4, 5, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    tlp, tref = tlp * mask, tref * mask
    cfg = ShapingConfig(beta=0.5, kl="forward", kl_placement="loss", kl_level="token")
    adv = torch.tensor([0.5, -0.5, 1.0, 0.0], dtype=torch.float64)
    got = policy_loss(cfg, tlp, tref.sum(-1), adv, token_logp_ref=tref, completion_mask=mask)
    want = -(adv * tlp.sum(-1)).mean() + 0.5 * (k3(tlp, tref) * mask).sum(-1).mean()
    assert torch.allclose(got, want)



def test_token_level_alg2_puts_the_anchors_reference_on_the_sequence():
    """Under Algorithm 2 at token level, the anchored samples' KL is k3 of their sequence log-prob
    against log pi_ref(z); the others keep the per-token k3 against their own reference."""
    gen = torch.Generator().manual_seed(4)
    tlp = -torch.rand(6, 3, generator=gen, dtype=torch.float64)
    tref = -torch.rand(6, 3, generator=gen, dtype=torch.float64)
    mask = torch.ones(6, 3, dtype=torch.long)
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    grp = torch.tensor([0, 0, 0, 1, 1, 1])
    cfg = ShapingConfig(beta=0.3, kl="forward", kl_placement="loss", kl_level="token", mara="auto", tau=1.0,
                        advantage="mean")
    shaped, lref_kl, anchored = shape_rewards(cfg, r, tlp.sum(-1), tref.sum(-1), grp)
    assert anchored.tolist() == [True, True, False, True, False, False]
    z0 = int(torch.argmax(torch.where(grp == 0, tref.sum(-1), -torch.inf) + torch.where(r >= 1, 0, -torch.inf)))
    assert torch.equal(lref_kl[:2], tref.sum(-1)[z0].expand(2))
    adv = group_advantages(shaped, grp, "mean")
    got = policy_loss(cfg, tlp, lref_kl, adv, token_logp_ref=tref, completion_mask=mask, anchored=anchored)
    k = torch.where(anchored, k3(tlp.sum(-1), lref_kl), (k3(tlp, tref) * mask).sum(-1))
    assert torch.allclose(got, -(adv * tlp.sum(-1)).mean() + 0.3 * k.mean())


def test_sequence_level_loo_weight_baseline_keeps_the_value_and_moves_the_gradient():
    gen = torch.Generator().manual_seed(5)
    lp = (-torch.rand(8, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    lref = -torch.rand(8, generator=gen, dtype=torch.float64) * 3
    grp, adv = torch.arange(2).repeat_interleave(4), torch.zeros(8, dtype=torch.float64)
    plain = ShapingConfig(beta=0.5, kl="forward", kl_placement="loss")
    loo = plain.replace(kl_weight_baseline="loo")
    v0, v1 = policy_loss(plain, lp, lref, adv), policy_loss(loo, lp, lref, adv, group=grp)
    assert torch.allclose(v0, v1)
    g0, = torch.autograd.grad(v0, lp)
    g1, = torch.autograd.grad(v1, lp)
    w = torch.exp(lref - lp.detach())
    b = torch.stack([torch.cat([w[grp == grp[i]][:j] for j in [list(torch.nonzero(grp == grp[i]).flatten()).index(i)]]
                               + [w[grp == grp[i]][list(torch.nonzero(grp == grp[i]).flatten()).index(i) + 1:]]).mean()
                     for i in range(8)])
    assert torch.allclose(g0, 0.5 * (1 - w) / 8) and torch.allclose(g1, 0.5 * (b - w) / 8)
    with pytest.raises(ValueError, match="kl_weight_baseline='loo' is a baseline for k3"):
        ShapingConfig(beta=0.5, kl="reverse", kl_placement="loss", kl_weight_baseline="loo")
    with pytest.raises(ValueError, match="needs sequence log-probs"):
        policy_loss(loo, lp, lref, adv)


def test_mara_alg1_is_applied_per_prompt_group():
    r, lp, lref, grp = _batch(2)
    cfg = ShapingConfig(beta=0.05, kl="reverse", kl_placement="reward", mara="auto", tau=1.0)
    shaped, lref_kl, _ = shape_rewards(cfg, r, lp, lref, grp)
    for g in range(3):  # group by group with the shared core, then the k1 penalty
        s = grp == g
        want = mara_rewards(r[s], lref[s], 0.05, 1.0) - 0.05 * k1(lp[s], lref[s])
        assert torch.allclose(shaped[s], want)
    # anchors differ between groups: one global anchor would give a different answer
    glob = mara_rewards(r, lref, 0.05, 1.0) - 0.05 * k1(lp, lref)
    assert not torch.allclose(shaped, glob)
    assert torch.equal(lref_kl, lref)


def test_mara_alg2_substitutes_reward_and_reference_per_group():
    r, lp, lref, grp = _batch(4)
    cfg = ShapingConfig(beta=0.05, kl="forward", kl_placement="loss", mara="auto", tau=1.0)
    shaped, lref_kl, _ = shape_rewards(cfg, r, lp, lref, grp)
    for g in range(3):
        s = grp == g
        wr, wl = mara_substitute(r[s], lref[s], 1.0)
        assert torch.allclose(shaped[s], wr) and torch.allclose(lref_kl[s], wl)


def test_mara_group_with_no_sample_above_tau_is_unchanged():
    r = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    lp = torch.full((8,), -2.0, dtype=torch.float64)
    lref = torch.tensor([-1.0, -2, -3, -4, -1, -2, -3, -4], dtype=torch.float64)
    grp = torch.arange(2).repeat_interleave(4)
    cfg = ShapingConfig(beta=0.1, mara="alg1", tau=1.0)
    shaped, *_ = shape_rewards(cfg, r, lp, lref, grp)
    base = r - 0.1 * (lp - lref)
    assert torch.allclose(shaped[:4], base[:4])  # documented: no anchor, nothing changes
    assert not torch.allclose(shaped[4:], base[4:])


def test_percentile_tau_per_group():
    r = torch.tensor([0.1, 0.2, 0.3, 0.9, 5.0, 6.0, 7.0, 8.0], dtype=torch.float64)
    lref = torch.tensor([-1.0, -2, -3, -4, -4, -3, -2, -1], dtype=torch.float64)
    grp = torch.arange(2).repeat_interleave(4)
    cfg = ShapingConfig(beta=0.1, kl="forward", kl_placement="loss", mara="alg2", tau_percentile=75.0)
    shaped, lref_kl, _ = shape_rewards(cfg, r, torch.zeros(8, dtype=torch.float64), lref, grp)
    # only the top sample of each group is >= its group's 75th percentile: it is its own anchor
    assert torch.allclose(shaped, r) and torch.allclose(lref_kl, lref)
    cfg = cfg.replace(tau_percentile=50.0)
    shaped, lref_kl, _ = shape_rewards(cfg, r, torch.zeros(8, dtype=torch.float64), lref, grp)
    assert shaped[2:4].tolist() == [0.3, 0.3] and shaped[6:].tolist() == [8.0, 8.0]


def test_entropy_bonus_in_reward():
    r, lp, lref, grp = _batch(5)
    cfg = ShapingConfig(kl="none", entropy=0.3)
    shaped, *_ = shape_rewards(cfg, r, lp, lref, grp)
    assert torch.allclose(shaped, r - 0.3 * lp)


def test_unlikely_is_the_baselines_transform_with_per_token_ranks():
    from mdkl.baselines import unlikeliness_rewards

    r, lp, lref, grp = _batch(3)
    r = r * 4 + 1  # judge-like scale, floor 1
    lengths = torch.tensor([1, 2, 3, 4] * 3)
    cfg = ShapingConfig(kl="none", unlikely=0.25, reward_floor=1.0)
    shaped, *_ = shape_rewards(cfg, r, lp, lref, grp, lengths=lengths)
    assert torch.allclose(shaped, unlikeliness_rewards(r, lp, grp, 0.25, 1.0, lengths.double()))
    # k1 in the reward is added after the transform
    cfg = cfg.replace(kl="reverse", kl_placement="reward", beta=0.1)
    shaped2, *_ = shape_rewards(cfg, r, lp, lref, grp, lengths=lengths)
    assert torch.allclose(shaped2, shaped - 0.1 * (lp - lref))


def test_all_equal_rewards_batch_under_percentile_tau():
    """The defined behaviour (mdkl.mara.batch_percentile_tau): tau = the common reward, every sample
    is good, the anchor is the group's best-supported sample; nothing is skipped."""
    g = 4
    r = torch.full((8,), 3.0, dtype=torch.float64)
    lref = torch.tensor([-1.0, -3, -2, -5, -4, -4, -6, -0.5], dtype=torch.float64)
    lp = torch.zeros(8, dtype=torch.float64)
    grp = torch.arange(2).repeat_interleave(g)
    rev = ShapingConfig(beta=0.1, kl="reverse", kl_placement="reward", mara="auto", tau_percentile=90.0)
    shaped, lref_kl, _ = shape_rewards(rev, r, lp, lref, grp)
    z = torch.tensor([-1.0] * 4 + [-0.5] * 4, dtype=torch.float64)  # best-supported sample per group
    assert torch.allclose(shaped, 3.0 + 0.1 * (z - lref) - 0.1 * (lp - lref))
    assert torch.allclose(lref_kl, lref)
    fwd = ShapingConfig(beta=0.1, kl="forward", kl_placement="loss", mara="auto", tau_percentile=90.0)
    shaped, lref_kl, _ = shape_rewards(fwd, r, lp, lref, grp)
    assert torch.allclose(shaped, r) and torch.allclose(lref_kl, z)
    adv = group_advantages(shaped, _groups(shaped.numel(), g), "rloo")
    assert torch.equal(adv, torch.zeros(8, dtype=torch.float64))


def test_batch_scope_percentile_tau_is_one_threshold_with_anchors_per_group():
    r = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8], dtype=torch.float64)
    lref = torch.tensor([-1.0, -2, -3, -4, -4, -3, -2, -1], dtype=torch.float64)
    lp = torch.zeros(8, dtype=torch.float64)
    grp = torch.arange(2).repeat_interleave(4)
    cfg = ShapingConfig(beta=0.1, kl="forward", kl_placement="loss", mara="alg2", tau_percentile=75.0,
                      tau_scope="batch")
    shaped, lref_kl, _ = shape_rewards(cfg, r, lp, lref, grp)
    # batch 75th percentile = 6.25: samples 7, 8 (group 1) are good; their anchor is the best-supported (8)
    assert shaped.tolist() == [1, 2, 3, 4, 5, 6, 8, 8] and lref_kl[6:].tolist() == [-1.0, -1.0]
    assert torch.equal(lref_kl[:6], lref[:6])
    # per-group scope: each group's top sample is alone above its tau -> nothing changes
    shaped_g, *_ = shape_rewards(cfg.replace(tau_scope="group"), r, lp, lref, grp)
    assert torch.equal(shaped_g, r)
    with pytest.raises(ValueError, match="tau_scope"):
        cfg.replace(tau_scope="prompt")


def test_placement_table_is_kl_gradient_direction_read_backwards():
    assert kl_estimator_for("reverse", "reward") == "k1"
    assert kl_estimator_for("reverse", "loss") == "k2"
    assert kl_estimator_for("forward", "loss") == "k3"
    with pytest.raises(ValueError, match="forward\\+loss"):
        kl_estimator_for("forward", "reward")
    assert ShapingConfig(kl="none").estimator is None and ShapingConfig(beta=0.0).estimator is None


def test_k1_as_a_loss_needs_the_explicit_override():
    cfg = ShapingConfig(beta=0.2, kl="reverse", kl_placement="loss", kl_estimator="k1")
    assert cfg.estimator == "k1"
    r, lp, lref, grp = _batch(6)
    shaped, lref_kl, _ = shape_rewards(cfg, r, lp, lref, grp)
    assert torch.equal(shaped, r)  # a loss, not a reward term
    adv = group_advantages(shaped, grp)
    assert torch.allclose(policy_loss(cfg, lp, lref_kl, adv), -(adv * lp).mean() + 0.2 * k1(lp, lref).mean())
    with pytest.raises(ValueError, match="kl_estimator='k3'"):
        ShapingConfig(kl="reverse", kl_placement="loss", kl_estimator="k3")
    with pytest.raises(ValueError, match="kl_estimator"):
        ShapingConfig(kl="none", kl_placement="loss", kl_estimator="k1")


@pytest.mark.parametrize("changes, fix", [
    (dict(mara="alg1", tau=1.0), "advantage='rloo' or 'mean'"),
    (dict(kl="forward", kl_placement="loss", mara="auto", tau=1.0), "advantage='rloo' or 'mean'"),
    (dict(kl="reverse", kl_placement="reward"), "advantage='rloo' or 'mean'"),
])
def test_grpo_advantage_is_refused_with_mara_or_k1_in_the_reward(changes, fix):
    """GRPO divides each group's shaped rewards by their std: inside an all-correct group MARA's
    (and k1's) beta-scaled spread then becomes unit-scale, and the regularized target no longer
    follows from the rewards."""
    with pytest.raises(ValueError, match=fix):
        ShapingConfig(beta=0.1, advantage="grpo", **changes)
    # the spread GRPO would blow up: an all-correct group under Alg. 1 differs only by beta * log-ratios
    r, lref = torch.ones(4, dtype=torch.float64), torch.tensor([-1.0, -1.1, -1.2, -1.3], dtype=torch.float64)
    cfg = ShapingConfig(beta=0.01, mara="alg1", tau=1.0, kl="reverse", kl_placement="reward", advantage="rloo")
    shaped, *_ = shape_rewards(cfg, r, lref, lref, torch.zeros(4, dtype=torch.long))
    assert (shaped.max() - shaped.min()).item() < 0.01
    assert (group_advantages(shaped, torch.zeros(4, dtype=torch.long), "grpo").abs().max() > 0.5).item()
    # allowed: GRPO with a KL loss and no MARA (Table 1's GRPO row)
    ShapingConfig(beta=0.1, kl="forward", kl_placement="loss", advantage="grpo")


@pytest.mark.parametrize("bad, msg", [(dict(beta=-1.0), "beta must be"), (dict(kl="sideways"), "unknown kl"),
                                      (dict(kl_level="word"), "unknown kl_level"), (dict(anchor="x"), "unknown anchor"),
                                      (dict(mara="alg1"), "threshold tau"), (dict(tau_percentile=101.0), "tau_percentile"),
                                      (dict(entropy=-1.0), "entropy"), (dict(unlikely=2.0), "beta_rank")])
def test_config_errors_name_the_fix(bad, msg):
    with pytest.raises(ValueError, match=msg):
        ShapingConfig(**bad)


def test_from_fields_reads_same_named_fields_of_any_trainer_config():
    from mdkl import lm
    from mdkl.toy import ToyConfig

    s = ShapingConfig.from_fields(lm.LMConfig(beta=0.05, kl="forward", kl_placement="loss", mara="auto"))
    assert (s.beta, s.kl, s.kl_placement, s.kl_level, s.mara, s.tau) == (0.05, "forward", "loss", "token", "auto", 1.0)
    t = ToyConfig(kl="forward", advantage="mean").shaping
    assert (t.estimator, t.advantage, t.kl_level) == ("k3", "mean", "sequence")


def test_best_of_n_advantage_is_the_mask_of_raw_rewards():
    r = torch.tensor([0.0, 2.0, 2.0, 1.0, 3.0, 0.0], dtype=torch.float64)
    cfg = ShapingConfig(best_of_n=True, kl="forward", kl_placement="loss")
    adv = advantages(cfg, r, r + 10.0, _groups(6, 3))
    assert adv.tolist() == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
