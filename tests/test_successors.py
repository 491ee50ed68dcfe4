"""The successor methods of mdkl.successors against hand-computed cases, their wiring through the
shaping path (ShapingConfig.successor), the configuration errors, and their exact targets
(closed forms, and the vanishing expected update at the fixed points)."""

import math

import numpy as np
import pytest
import torch

from mdkl import successors as S
from mdkl import targets
from mdkl.shaping import ShapingConfig, advantages, policy_loss, shape_rewards
from mdkl.toy import ToyConfig, train_categorical

REF4, R4 = np.array([0.68, 0.30, 0.02]), np.array([0.0, 1.0, 1.0])


def test_differential_smoothing_by_hand():
    r = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    lref = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)
    out = S.differential_smoothing_rewards(r, lref, r >= 1.0, gamma_p=0.5, gamma_n=0.25)
    assert out.tolist() == pytest.approx([1 + 0.5, 0 - 0.5, 1 + 1.5])


def test_inverse_probability_by_hand():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    o = torch.tensor([7, 7, 3, 5, 7, 2])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    assert S.outcome_shares(o, g).tolist() == pytest.approx([0.5, 0.5, 0.25, 0.25, 0.5, 0.5])
    assert S.inverse_probability_rewards(r, o, g).tolist() == pytest.approx([2, 2, 4, 0, 2, 2])
    assert S.inverse_probability_rewards(r, o, g, alpha=0.5).tolist() == pytest.approx(
        [2**0.5, 2**0.5, 2, 0, 2**0.5, 2**0.5])
    assert S.inverse_probability_rewards(r, o, g, eps=0.6).tolist() == pytest.approx([1 / 0.6] * 2 + [1 / 0.6, 0] + [1 / 0.6] * 2)
    assert S.outcome_ids(["<a>1", "<a>2", "<a>1"]).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="integer id"):
        S.outcome_shares(torch.tensor([0.5, 1.5]), torch.tensor([0, 0]))


def test_ucpo_by_hand():
    # one group: three correct (log pi -1, -2, -3, lengths 1, 1, 2) with advantage 0.5, one incorrect -1.5
    adv = torch.tensor([0.5, 0.5, 0.5, -1.5], dtype=torch.float64)
    correct = torch.tensor([True, True, True, False])
    logp = torch.tensor([-1.0, -2.0, -6.0, -0.5], dtype=torch.float64)
    lengths = torch.tensor([1, 1, 2, 1])
    out = S.ucpo_advantages(adv, correct, logp, torch.zeros(4, dtype=torch.long), tau=0.2, lengths=lengths)
    q = np.exp([-1.0, -2.0, -3.0]) / np.exp([-1.0, -2.0, -3.0]).sum()
    w = 0.8 / 3 + 0.2 * (1 / q) / (1 / q).sum()
    assert out[:3].tolist() == pytest.approx((0.5 * 3 * w).tolist())
    assert out[:3].sum().item() == pytest.approx(1.5)  # total positive advantage kept
    assert out[3].item() == -1.5
    raw = S.ucpo_advantages(adv, correct, logp, torch.zeros(4, dtype=torch.long), tau=0.2)
    assert raw[2] > out[2]  # without length normalization the long sample looks rarer
    one = S.ucpo_advantages(adv, torch.tensor([True, False, False, False]), logp, torch.zeros(4, dtype=torch.long))
    assert torch.equal(one, adv)  # a single correct sample: nothing to redistribute


def test_flow_balance_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    lref = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    adv = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    log_z = torch.tensor([[0.25]], dtype=torch.float64, requires_grad=True)
    loss = S.flow_balance_loss(logp, lref, adv, log_z, scale=2.0)
    d = np.array([0.25 - 1 + 1.5 - 1.0, 0.25 - 2 + 1 + 1.0])
    assert loss.item() == pytest.approx((d**2).mean())
    loss.sum().backward()
    assert log_z.grad.item() == pytest.approx(d.mean() * 2 / 1 * 1)
    ln = S.flow_balance_loss(logp.detach(), lref, adv, log_z.detach(), 2.0, lengths=torch.tensor([2, 4]))
    d2 = np.array([0.25 - 0.5 + 0.75 - 1.0, 0.25 - 0.5 + 0.25 + 1.0])
    assert ln.item() == pytest.approx((d2**2).mean())


def test_shaping_path_selects_each_method():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    lp = torch.log(torch.tensor([0.5, 0.1, 0.3, 0.5], dtype=torch.float64))
    lref = torch.log(torch.tensor([0.4, 0.2, 0.2, 0.4], dtype=torch.float64))
    g = torch.zeros(4, dtype=torch.long)
    ds = ShapingConfig(beta=0.1, kl="reverse", kl_placement="loss", successor="diff_smooth", tau=1.0)
    assert shape_rewards(ds, r, lp, lref, g).rewards.tolist() == pytest.approx(
        S.differential_smoothing_rewards(r, lref, r >= 1, 0.1).tolist())
    ips = ShapingConfig(beta=0.1, kl_placement="loss", successor="ips")
    assert shape_rewards(ips, r, lp, lref, g, outcomes=torch.tensor([0, 1, 2, 0])).rewards.tolist() == \
        pytest.approx([2, 4, 0, 2])
    with pytest.raises(ValueError, match="needs outcomes"):
        shape_rewards(ips, r, lp, lref, g)
    uc = ShapingConfig(beta=0.1, kl_placement="loss", successor="ucpo", tau=1.0, advantage="mean")
    a = advantages(uc, r, shape_rewards(uc, r, lp, lref, g).rewards, g, logp=lp)
    assert a.tolist() == pytest.approx(S.ucpo_advantages(torch.tensor([0.25, 0.25, -0.75, 0.25], dtype=torch.float64),
                                                         r >= 1, lp, g).tolist())
    fl = ShapingConfig(beta=0.5, kl="none", successor="flowrl", advantage="grpo")
    adv = advantages(fl, r, r, g)
    lz = torch.zeros(1, dtype=torch.float64)
    assert policy_loss(fl, lp, lref, adv, log_z=lz).item() == pytest.approx(
        S.flow_balance_loss(lp, lref, adv, lz, 2.0).item())


@pytest.mark.parametrize("bad, match", [
    (dict(successor="ips", mara="alg1", tau=1.0), "set mara='none'"),
    (dict(successor="diff_smooth"), "needs the correct-set threshold"),
    (dict(successor="diff_smooth", tau=1.0, beta=0.0), "is vanilla RL"),
    (dict(successor="flowrl", kl="reverse", advantage="grpo", kl_placement="loss"), "set kl='none'"),
    (dict(successor="flowrl", kl="none"), "advantage='grpo'"),
    (dict(successor="ucpo", tau=1.0, ucpo_tau=2.0), "ucpo_tau"),
    (dict(successor="bogus"), "unknown successor"),
])
def test_configuration_errors_name_the_fix(bad, match):
    with pytest.raises(ValueError, match=match):
        ShapingConfig(**{"kl_placement": "loss", **bad})


def test_diff_smooth_target_is_mara_without_the_anchor():
    """Reverse KL, gamma_p = beta: uniform on the correct set, each at e^(R/beta) where MARA has
    pi_ref(z) e^(R(z)/beta); below tau proportional to pi_ref e^(R/beta) (gamma_n = 0)."""
    for beta in (0.1, 1.0):
        g = S.diff_smooth_target(REF4, R4, beta, 1.0)
        w = np.array([0.68, math.exp(1 / beta), math.exp(1 / beta)])
        assert g == pytest.approx(w / w.sum(), rel=1e-12)


def test_exact_targets_are_fixed_points():
    for beta in (0.1, 1.0):
        for kl in ("reverse", "forward"):
            for G in (32, None):
                t = S.ips_target(REF4, R4, beta, kl, G)
                assert np.abs(S.ips_expected_gradient(t, REF4, R4, beta, kl, G)).max() < 1e-10
    # beta -> 0 limit: uniform on the rewarded outputs
    t = S.ips_target(REF4, R4, 1e-4, "reverse", None)
    assert t[1] / t[2] == pytest.approx(1.0, rel=1e-3)
    # UCPO with ucpo_tau = 0 is the vanilla target; FlowRL keeps the reference's ratio on equal rewards
    assert S.ucpo_target(REF4, R4, 0.5, 1.0, ucpo_tau=0.0) == pytest.approx(targets.reverse_kl_target(REF4, R4, 0.5))
    f = S.flowrl_target(REF4, R4, scale=2.0, group_size=8)
    assert f[1] / f[2] == pytest.approx(15.0, rel=1e-9)


def test_ips_expected_gradient_matches_monte_carlo():
    pi = np.array([0.5, 0.3, 0.2])
    G, n = 4, 200_000
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.choice(3, size=(n, G), p=pi))
    r = torch.as_tensor(R4)[x].flatten()
    grp = torch.arange(n).repeat_interleave(G)
    f = S.inverse_probability_rewards(r, x.flatten(), grp).view(n, G)
    a = (f - (f.sum(1, keepdim=True) - f) / (G - 1)).numpy()
    onehot = np.eye(3)[x.numpy()] - pi
    mc = (a[..., None] * onehot).mean((0, 1))
    exact = S.ips_expected_gradient(pi, REF4, R4, 0.0 + 1e-300, "reverse", G)
    assert mc == pytest.approx(exact, abs=5e-3)


def test_toy_trains_every_method():
    for kw in (dict(successor="diff_smooth", tau=1.0), dict(successor="ips"), dict(successor="ucpo", tau=1.0),
               dict(successor="flowrl", kl="none", advantage="grpo")):
        res = train_categorical(ToyConfig(beta=0.5, steps=30, n_seeds=2, **kw), R4, REF4)
        assert np.isfinite(res.final).all() and res.final.shape == (2, 3)


def test_lm_trainer_runs_every_method():
    """LMConfig carries the same fields; IPS (outcome = the task's parsed answer), DS and UCPO train a
    few steps on the tiny model, and FlowRL with its learned log Z per prompt."""
    import copy

    from mdkl import lm
    from mdkl.lm import smalllm
    from mdkl.tasks import onetwo
    tiny = smalllm.SmallLMConfig(n_docs=400, steps=40, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64,
                                  vocab_size=300, batch_size=16, max_len=64)
    model, tok = smalllm.load_small_lm(tiny, progress=False)
    task = onetwo.OneTwoTask(prompts_used=onetwo.PROMPTS)
    base = lm.LMConfig(steps=2, eval_every=2, eval_samples=8, prompts_per_step=2, group_size=4, max_new_tokens=10,
                       lr=1e-3, beta=0.02, kl="reverse", kl_placement="loss")
    for s in ("diff_smooth", "ips", "ucpo"):
        res = lm.train(base.replace(successor=s), task, copy.deepcopy(model), tok, progress=False)
        assert np.isfinite(res.history.loss).all() and s in base.replace(successor=s).label()
    fl = lm.train(base.replace(successor="flowrl", kl="none", advantage="grpo", steps=3), task, copy.deepcopy(model),
                  tok, progress=False)
    z = fl.extra["log_z"]
    assert z.shape == (len(onetwo.PROMPTS),) and np.isfinite(z).all() and np.abs(z).max() > 0  # log Z was trained
    assert np.isfinite(fl.history.loss).all()


def test_task_outcomes_are_the_parsed_answers():
    """IPS counts the 1-2 task's answers, not its strings: whitespace variants of "1" are one outcome."""
    from mdkl import lm
    from mdkl.tasks import onetwo
    texts = ["<answer>1</answer>", " <answer>1</answer>", "<answer>2</answer>", "junk", "<answer>3</answer>"]
    ids = lm.task_outcomes(onetwo.OneTwoTask(), texts)
    assert ids.tolist() == [onetwo.ONE, onetwo.ONE, onetwo.TWO, onetwo.INVALID, onetwo.INVALID]
    assert lm.task_outcomes(object(), texts).tolist() == [0, 1, 2, 3, 4]  # no outcomes(): one id per distinct text

    class Bad:
        name = "bad"

        def outcomes(self, completions):
            return [0]

    with pytest.raises(ValueError, match="one integer id per completion"):
        lm.task_outcomes(Bad(), texts)


# ----------------------------------------------------------------------------------------------
# UCPO at a finite group size (mdkl.ucpo_exact)
# ----------------------------------------------------------------------------------------------
def _enumerated_ucpo_advantages(pi, rewards, G, ucpo_tau, baseline):
    """E[A | y] of the transform itself (S.ucpo_advantages), averaged over every one of the n^G
    groups with its probability: exact, independent of the Laplace-form derivation."""
    import itertools

    n = len(pi)
    seqs = np.array(list(itertools.product(range(n), repeat=G)))
    prob = np.prod(pi[seqs], 1)
    r = torch.as_tensor(rewards[seqs], dtype=torch.float64)
    k = r.sum(1, keepdim=True)
    adv = r - (k - r) / (G - 1) if baseline == "rloo" else r - k / G
    grp = torch.arange(len(seqs)).repeat_interleave(G)
    logp = torch.log(torch.as_tensor(pi))[torch.as_tensor(seqs).flatten()]
    a = S.ucpo_advantages(adv.flatten(), r.flatten() >= 1, logp, grp, ucpo_tau).view(-1, G).numpy()
    # by exchangeability E[A_1 | y_1 = y] = E[sum_i A_i 1{y_i = y}] / (G pi_y)
    return np.array([(prob[:, None] * a * (seqs == y)).sum() / (G * pi[y]) for y in range(n)])


@pytest.mark.parametrize("G", [2, 3, 5])
@pytest.mark.parametrize("baseline", ["rloo", "mean"])
def test_ucpo_expected_advantages_match_enumeration(G, baseline):
    from mdkl.ucpo_exact import ucpo_expected_advantages
    R = np.array([0.0, 1.0, 1.0, 1.0])
    pi = np.array([0.25, 0.5, 0.2, 0.05])
    exact = ucpo_expected_advantages(pi, R, 1.0, G, 0.2, baseline)
    assert exact == pytest.approx(_enumerated_ucpo_advantages(pi, R, G, 0.2, baseline), abs=1e-12)
    assert pi @ exact == pytest.approx(0.0, abs=1e-12)  # the group's advantages sum to zero
    # ucpo_tau = 0: the baseline's own expected advantages, 1 - m and -m (rloo)
    if baseline == "rloo":
        assert ucpo_expected_advantages(pi, R, 1.0, G, 0.0) == pytest.approx([-0.75, 0.25, 0.25, 0.25], abs=1e-12)


def test_ucpo_group_target_is_the_fixed_point_of_the_transform():
    """At G = 4 on Fig. 4's problem the enumerated update of the transform itself (plus the KL
    gradient) vanishes at ucpo_group_target, and not at the large-group target."""
    from mdkl.ucpo_exact import ucpo_expected_gradient, ucpo_group_target
    G, beta = 4, 1.0
    for kl in ("reverse", "forward"):
        t = ucpo_group_target(REF4, R4, beta, 1.0, kl, group_size=G)
        assert np.abs(ucpo_expected_gradient(t, REF4, R4, beta, 1.0, kl, G)).max() < 1e-10
        kl_grad = (lambda p: p * (np.log(p / REF4) - p @ np.log(p / REF4))) if kl == "reverse" else (lambda p: p - REF4)
        enumerated = lambda p: p * _enumerated_ucpo_advantages(p, R4, G, 0.2, "rloo") - beta * kl_grad(p)
        assert np.abs(enumerated(t)).max() < 1e-10
        big = S.ucpo_target(REF4, R4, beta, 1.0, kl)
        assert np.abs(enumerated(big)).max() > 1e-3


def test_ucpo_group_target_tends_to_the_large_group_limit():
    from mdkl.ucpo_exact import ucpo_group_target
    big = S.ucpo_target(REF4, R4, 1.0, 1.0)
    gap = [np.abs(ucpo_group_target(REF4, R4, 1.0, 1.0, group_size=G) - big).max() for G in (32, 256, 2048)]
    assert gap[0] > gap[1] > gap[2] and gap[2] < 1e-4
    assert gap[0] / gap[1] == pytest.approx(8, rel=0.25) and gap[1] / gap[2] == pytest.approx(8, rel=0.25)  # ~ 1/G
    # ucpo_tau = 0 is vanilla at any G; a tiny beta leaves no incorrect mass to lift, so vanilla too
    assert ucpo_group_target(REF4, R4, 0.5, 1.0, ucpo_tau=0.0, group_size=8) == pytest.approx(
        targets.reverse_kl_target(REF4, R4, 0.5), abs=1e-12)
    assert ucpo_group_target(REF4, R4, 0.01, 1.0) == pytest.approx(targets.reverse_kl_target(REF4, R4, 0.01), abs=1e-12)


def test_ucpo_group_target_refuses_what_it_does_not_model():
    from mdkl.ucpo_exact import ucpo_group_target
    with pytest.raises(ValueError, match="0/1 rewards"):
        ucpo_group_target(REF4, [0.0, 0.5, 1.0], 1.0, 0.5)
    with pytest.raises(ValueError, match="large-group limit"):
        ucpo_group_target(REF4, R4, 1.0, 1.0, group_size=1)
    with pytest.raises(ValueError, match="baseline"):
        ucpo_group_target(REF4, R4, 1.0, 1.0, baseline="grpo")
