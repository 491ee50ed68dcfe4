"""Forward-KL MARA (paper §5, Alg. 2) on completions of tokens, on the exact token tree
(mdkl.token_tree): spreading the anchor's offset over the tokens is not uniform over the good
answers; Algorithm 2 with sequence-level k3 (mdkl.mara_kl.anchored_kl_loss) is, exactly."""

import pytest
import torch

from mdkl import mara
from mdkl import token_tree as tt
from mdkl.kl import k3
from mdkl.mara_kl import anchored_kl_loss, group_loo_mean

BETA = 0.1
#: the sequence-level fixed point is reached to ~1e-13 (gradient ~1e-17); the nearest
#: not-exact candidate (hybrid) is 0.012 away, the even spread 0.22: 1e-6 separates them safely
TOL = 1e-6


@pytest.fixture(scope="module")
def tree():
    torch.set_num_threads(1)
    return tt.one_two_tree()


def p_one(tree, pi):
    good, _ = tt.whole_space_anchor(tree, 1.0)
    one = good & (tree.sequences[:, 1] == 1)
    return float(pi[one].sum() / pi[good].sum())


@pytest.fixture(scope="module")
def fits(tree):
    return {n: tt.train_exact(tree, tt.forward_mara_loss(tree, n, BETA)) for n in ("vanilla", "even_spread", "sequence")}


def test_tree_reference_prefers_one(tree):
    pr = tree.ref_probs()
    assert abs(float(pr.sum()) - 1) < 1e-12
    assert 0.74 < p_one(tree, pr) < 0.95
    good, z = tt.whole_space_anchor(tree, 1.0)
    assert 0.3 < float(pr[good].sum()) < 0.7  # imperfect format
    assert tree.decode(z).startswith("<a> 1 </a>")


def test_even_spread_keeps_the_preference_sequence_level_is_uniform(tree, fits):
    good, _ = tt.whole_space_anchor(tree, 1.0)
    for f in fits.values():
        assert f.grad_max < 1e-9  # at the fixed point
    assert p_one(tree, fits["vanilla"].pi) > 0.75                         # reference's 0.785 kept
    assert 0.65 < p_one(tree, fits["even_spread"].pi) < 0.75              # exponent 1 - 1/T
    assert tt.good_set_max_min(fits["even_spread"].pi, good) > 10
    assert abs(p_one(tree, fits["sequence"].pi) - 0.5) < TOL
    assert tt.good_set_max_min(fits["sequence"].pi, good) < 1 + TOL
    target = mara.mara_forward_target(tree.ref_probs().numpy(), tree.rewards.numpy(), BETA, 1.0)
    assert float((fits["sequence"].pi - torch.as_tensor(target)).abs().max()) < 1e-9


def test_hybrid_is_close_but_not_exact(tree):
    fit = tt.train_exact(tree, tt.forward_mara_loss(tree, "hybrid", BETA))
    assert 0.005 < p_one(tree, fit.pi) - 0.5 < 0.03


def test_reverse_alg1_is_uniform(tree):
    fit = tt.train_exact(tree, tt.reverse_mara_loss(tree, 1.0))
    good, _ = tt.whole_space_anchor(tree, 1.0)
    assert abs(p_one(tree, fit.pi) - 0.5) < TOL
    assert tt.good_set_max_min(fit.pi, good) < 1 + TOL
    target = mara.mara_target(tree.ref_probs().numpy(), tree.rewards.numpy(), 1.0, 1.0)
    assert float((fit.pi - torch.as_tensor(target)).abs().max()) < 1e-9


def _batch(tree, beta=BETA):
    good, _ = tt.whole_space_anchor(tree, 1.0)
    tok_ref = tree.ref_token_logprobs()
    _, lref_kl = mara.mara_substitute(tree.rewards, tok_ref.sum(-1), 1.0)
    logits = tree.ref_logp + 0.3 * torch.randn(tree.ref_logp.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return tree.token_logprobs(logits), tok_ref, lref_kl, good


def test_anchored_kl_loss_matches_the_tree_formulas_and_ignores_padding(tree):
    tok, tok_ref, lref_kl, good = _batch(tree)
    seq = anchored_kl_loss(tok, tok_ref, torch.ones_like(tok), lref_kl, good, BETA, "sequence")
    assert torch.allclose(seq, BETA * k3(tok.sum(-1), lref_kl), rtol=1e-12, atol=0)
    per_tok = anchored_kl_loss(tok, tok_ref, torch.ones_like(tok), lref_kl, good, BETA, "token")
    want = torch.where(good, BETA * k3(tok.sum(-1), lref_kl), BETA * k3(tok, tok_ref).sum(-1))
    assert torch.allclose(per_tok, want, rtol=1e-12, atol=0)
    # right padding with garbage under mask 0 changes nothing
    pad = torch.full((tok.shape[0], 3), -7.0, dtype=tok.dtype)
    m = torch.cat([torch.ones_like(tok), torch.zeros_like(pad)], 1)
    for level, ref_out in (("sequence", seq), ("token", per_tok)):
        out = anchored_kl_loss(torch.cat([tok, pad], 1), torch.cat([tok_ref, pad - 1], 1), m, lref_kl, good, BETA, level)
        assert torch.allclose(out, ref_out, rtol=1e-12, atol=0)


def test_loo_baseline_keeps_value_and_expected_gradient(tree):
    tok, tok_ref, lref_kl, good = _batch(tree)
    idx = torch.tensor([0, 112, 120, 200, 5, 180, 185, 800])  # mixed good / bad, two groups of 4
    assert good[idx].any() and (~good[idx]).any()
    grp = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    lp = tok[idx].detach().clone().requires_grad_(True)
    args = (tok_ref[idx], torch.ones_like(lp), lref_kl[idx], good[idx], BETA)
    plain = anchored_kl_loss(lp, *args)
    loo = anchored_kl_loss(lp, *args, weight_baseline="loo", group=grp)
    assert torch.allclose(plain, loo)  # same value
    g, = torch.autograd.grad(loo.sum(), lp)
    x = torch.exp(lref_kl[idx] - lp.detach().sum(-1))
    b = group_loo_mean(x, grp)
    assert torch.allclose(g, (BETA * (b - x))[:, None].expand_as(g))


def test_loo_baseline_is_unbiased_by_sampling(tree, fits):
    """Mean over 4000 sampled groups of 8 at the fixed point: both estimators hit the exact
    expected KL gradient within Monte-Carlo error (se ~0.002, measured), LOO with less spread."""
    good, _ = tt.whole_space_anchor(tree, 1.0)
    tok_ref = tree.ref_token_logprobs()
    _, lref_kl = mara.mara_substitute(tree.rewards, tok_ref.sum(-1), 1.0)
    lg0 = fits["sequence"].logits
    exact = lg0.clone().requires_grad_(True)
    tt.expected_loss(exact, tree, lambda t: anchored_kl_loss(t, tok_ref, torch.ones_like(t), lref_kl, good, BETA)).backward()
    pi = tree.token_logprobs(lg0).sum(-1).exp()
    n_groups, g = 4000, 8
    idx = torch.multinomial(pi, n_groups * g, replacement=True, generator=torch.Generator().manual_seed(1))
    grp = torch.arange(n_groups).repeat_interleave(g)
    for wb in ("none", "loo"):
        lg = lg0.clone().requires_grad_(True)
        t = tree.token_logprobs(lg)[idx]
        anchored_kl_loss(t, tok_ref[idx], torch.ones_like(t), lref_kl[idx], good[idx], BETA,
                            weight_baseline=wb, group=grp if wb == "loo" else None).mean().backward()
        assert float((lg.grad - exact.grad).norm()) < 0.01


def test_bad_input_raises(tree):
    tok, tok_ref, lref_kl, good = _batch(tree)
    ones = torch.ones_like(tok)
    with pytest.raises(ValueError, match="shape"):
        anchored_kl_loss(tok, tok_ref[:, :-1], ones, lref_kl, good, BETA)
    with pytest.raises(ValueError, match="shape"):
        anchored_kl_loss(tok, tok_ref, ones, lref_kl[:-1], good, BETA)
    with pytest.raises(ValueError, match="B, T"):
        anchored_kl_loss(tok.sum(-1), tok_ref, ones, lref_kl, good, BETA)
    with pytest.raises(ValueError, match="bool"):
        anchored_kl_loss(tok, tok_ref, ones, lref_kl, good.double(), BETA)
    with pytest.raises(ValueError, match="beta"):
        anchored_kl_loss(tok, tok_ref, ones, lref_kl, good, 0.0)
    with pytest.raises(ValueError, match="level"):
        anchored_kl_loss(tok, tok_ref, ones, lref_kl, good, BETA, "chunk")
    with pytest.raises(ValueError, match="not anchored"):  # substituted reference without the anchored mask
        anchored_kl_loss(tok, tok_ref, ones, lref_kl, torch.zeros_like(good), BETA)
    with pytest.raises(ValueError, match="group"):
        anchored_kl_loss(tok, tok_ref, ones, lref_kl, good, BETA, weight_baseline="loo")
    with pytest.raises(ValueError, match="level='sequence'"):
        anchored_kl_loss(tok, tok_ref, ones, lref_kl, good, BETA, "token", weight_baseline="loo",
                            group=torch.zeros(tok.shape[0], dtype=torch.long))
    with pytest.raises(ValueError, match=">= 2 samples"):
        group_loo_mean(torch.ones(3), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="candidate"):
        tt.forward_mara_loss(tree, "chunked", BETA)
    with pytest.raises(ValueError, match="logits"):
        tree.token_logprobs(torch.zeros(3, 4))
