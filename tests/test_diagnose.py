"""The collapse diagnostic (mdkl.lm.diagnose) and the exact 1-2 answer split (mdkl.tasks.onetwo): the targets
it reports are the paper's (Rem. 3.1, 3.3, B.3, Alg. 2), the Rem. 4.4 flip points are where the
preference swaps, exact log-probs match sampling, and bad input is refused with a clear message."""

import math

import numpy as np
import pytest
import torch

from mdkl.lm import diagnose, smalllm
from mdkl.tasks import onetwo
from mdkl.mara import mara_forward_target, mara_target
from mdkl.targets import forward_kl_target, reverse_kl_target

TINY = smalllm.SmallLMConfig(n_docs=300, steps=30, hidden_size=32, n_layers=1, n_heads=2, intermediate_size=64,
                             vocab_size=300, max_len=64)


@pytest.fixture(scope="module")
def small():
    return smalllm.load_small_lm(TINY, progress=False)


def test_equal_rewards_keep_the_reference_split_and_mara_is_uniform():
    lp = np.log([0.57, 0.03])  # "1", "2", and 0.4 left for the rest
    d = diagnose.diagnose_logprobs(lp, [1, 1], [0.001, 0.03], labels=["1", "2"], rest_reward=0.0,
                                   candidates=["a", "b"])
    assert abs(d.rest_mass - 0.4) < 1e-12
    t = d.targets.set_index(["beta", "target"])
    h_ref = -(0.95 * math.log(0.95) + 0.05 * math.log(0.05))
    for b in (0.001, 0.03):
        for name in ("vanilla reverse", "vanilla forward"):
            row = t.loc[(b, name)]
            q = row.p_1 / (row.p_1 + row.p_2)
            assert abs(q - 0.95) < 1e-9  # Rem. 4.3: equal rewards keep the reference ratio
            assert row.favoured_label == "1"
        for name in ("MARA reverse", "MARA forward"):
            row = t.loc[(b, name)]
            assert abs(row.p_1 / (row.p_1 + row.p_2) - 0.5) < 1e-9 and row.favoured_answer == "tie"
    ref = np.array([0.57, 0.03, 0.4])
    r = np.array([1, 1, 0.0])
    np.testing.assert_allclose(d.probs[(0.03, "vanilla reverse")], reverse_kl_target(ref, r, 0.03), atol=1e-12)
    np.testing.assert_allclose(d.probs[(0.03, "vanilla forward")], forward_kl_target(ref, r, 0.03), atol=1e-12)
    np.testing.assert_allclose(d.probs[(0.03, "MARA reverse")], mara_target(ref, r, 0.03, 1.0), atol=1e-12)
    np.testing.assert_allclose(d.probs[(0.03, "MARA forward")], mara_forward_target(ref, r, 0.03, 1.0), atol=1e-12)


def test_flip_points_are_where_the_preference_swaps():
    # y0: reward 1, pi_ref 0.1; y1: reward 0.5, pi_ref 0.9 -> beta* = 0.5 / log 9 (Rem. 4.4)
    d = diagnose.diagnose_logprobs(np.log([0.1, 0.9]), [1.0, 0.5], [0.1, 0.5], candidates=["y0", "y1"])
    b_star = 0.5 / math.log(9)
    assert len(d.flips) == 1 and abs(d.flips.beta_star[0] - b_star) < 1e-12
    t = d.targets[d.targets.target == "vanilla reverse"].set_index("beta")
    assert t.loc[0.1, "favoured"] == "y0" and t.loc[0.5, "favoured"] == "y1"  # 0.1 < beta* ~ 0.23 < 0.5
    assert "flip points: 1" in d.summary()


def test_reference_logprobs_are_the_model_probabilities(small):
    model, tok = small
    cands = ["<answer>1</answer>", "<answer>2</answer>", "1"]
    lp = diagnose.reference_logprobs(model, tok, onetwo.PROMPT, cands)
    pref = onetwo.answer_preference(model, tok)
    assert abs(lp[0] - pref["logp1"]) < 1e-5 and abs(lp[1] - pref["logp2"]) < 1e-5
    d = diagnose.diagnose(model, tok, onetwo.PROMPT, cands, [1, 1, 0], [0.01], labels=["1", "2", "bad"])
    assert np.isclose(d.candidates.ref.sum(), 1.0) and (d.candidates.logp_ref < 0).all()


def test_exact_answer_split_sums_the_enumerated_strings(small):
    model, tok = small
    sets = onetwo.valid_answer_strings()
    assert len(sets[1]) == len(sets[2]) == 81 and len(set(sets[1] + sets[2])) == 162
    assert all(onetwo.parse_answer(s) == 1 for s in sets[1]) and all(onetwo.parse_answer(s) == 2 for s in sets[2])
    pre = onetwo.valid_answer_strings("<answer>")
    assert len(pre[1]) == 27 and all(onetwo.parse_answer("<answer>" + s) == 2 for s in pre[2])
    e = onetwo.exact_answer_split(model, tok)
    lp = diagnose.reference_logprobs(model, tok, onetwo.PROMPT, sets[1] + sets[2])
    p = np.exp(lp)
    assert abs(e["p1_exact"] - p[:81].sum()) < 1e-9 and abs(e["p2_exact"] - p[81:].sum()) < 1e-9
    assert abs(e["p1_valid_exact"] - p[:81].sum() / p.sum()) < 1e-9
    assert 0 < e["valid_exact"] <= 1 + 1e-9 and 0 <= e["valid_entropy_exact"] <= math.log(2) + 1e-12


def test_every_valid_string_fits_in_a_completion(small):
    """The valid set is reachable: each enumerated string, with the end-of-turn token, takes at most
    16 tokens in the small tokenizer's canonical split (notebook 05 samples <= 16 new tokens)."""
    _, tok = small
    texts = sum(onetwo.valid_answer_strings().values(), [])
    n = [len(tok(t + tok.eos_token, add_special_tokens=False)["input_ids"]) for t in texts]
    assert max(n) <= 16


def test_bad_input_is_refused_with_a_clear_message(small):
    model, tok = small
    with pytest.raises(ValueError, match="candidates is empty"):
        diagnose.diagnose(model, tok, onetwo.PROMPT, [], [], [0.01])
    with pytest.raises(ValueError, match="one reward per candidate"):
        diagnose.diagnose(model, tok, onetwo.PROMPT, ["<answer>1</answer>", "<answer>2</answer>"], [1.0], [0.01])
    for beta in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="beta"):
            diagnose.diagnose(model, tok, onetwo.PROMPT, ["<answer>1</answer>"], [1.0], [beta])
    with pytest.raises(ValueError, match="cannot encode the prompt"):
        diagnose.diagnose(model, tok, "pick \ud800 one", ["<answer>1</answer>"], [1.0], [0.01])
    with pytest.raises(ValueError, match="beyond the model's context"):
        diagnose.diagnose(model, tok, "1 2 " * 200, ["<answer>1</answer>"], [1.0], [0.01])
    with pytest.raises(ValueError, match="prompt is empty"):
        diagnose.diagnose(model, tok, "", ["<answer>1</answer>"], [1.0], [0.01])
    with pytest.raises(ValueError, match="not one string"):
        diagnose.diagnose(model, tok, onetwo.PROMPT, "<answer>1</answer>", [1.0], [0.01])
    with pytest.raises(ValueError, match="NaN/inf"):
        diagnose.diagnose_logprobs([-1.0], [float("nan")], [0.01])
    with pytest.raises(ValueError, match="below tau"):
        diagnose.diagnose_logprobs([-1.0], [1.0], [0.01], rest_reward=1.0)


def test_command_line(small, capsys, monkeypatch):
    model, tok = small
    monkeypatch.setattr(diagnose, "_load", lambda name: (model, tok))
    d = diagnose.main(["--candidates", "<answer>1</answer>", "<answer>2</answer>", "--rewards", "1", "1",
                       "--labels", "1", "2", "--betas", "0.01", "0.03", "--rest-reward", "0"])
    out = capsys.readouterr().out
    assert "MARA forward" in out and "flip points" in out and len(d.targets) == 8

def test_command_line_bad_input_is_one_line_without_traceback(capsys, tmp_path):
    """Mismatched rewards, a bad beta, a bad model path: argparse's one-line error, exit status 2."""
    for argv, match in ((["--candidates", "a", "b", "--rewards", "1"], "one reward per candidate"),
                        (["--candidates", "a", "--rewards", "1", "--betas", "-1"], "beta"),
                        (["--model", str(tmp_path / "nope"), "--candidates", "a", "--rewards", "1"], "no such folder"),
                        (["--model", str(tmp_path), "--candidates", "a", "--rewards", "1"], "not a loadable")):
        with pytest.raises(SystemExit) as e:
            diagnose.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and match in err and "Traceback" not in err
        assert len([s for s in err.splitlines() if s.startswith("python -m mdkl.lm.diagnose: error")]) == 1


def test_small_is_notebook_05s_model(monkeypatch):
    from mdkl.lm import smalllm, trainer
    from mdkl.tasks import onetwo_runs

    seen = {}
    monkeypatch.setattr(trainer, "load_model", lambda name, small=None: seen.setdefault("cfg", small))
    diagnose._load("small")
    assert seen["cfg"] == smalllm.ONETWO_SMALL == onetwo_runs.SMALL_P95
