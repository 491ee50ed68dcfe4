"""The naming task (mdkl.tasks.naming_world, mdkl.tasks.naming): the world is what its docstring says,
the parser accepts exactly the enumerated answers, every answer has one token sequence that fits a
completion, the exact metrics are the sampled ones without sampling error, the exact targets are the
paper's (Rem. 3.1, 3.3, B.3, Alg. 2) with the invalid strings lumped exactly, bad input is refused
with a clear message, and mdkl.lm.train runs on the task (vanilla and MARA)."""

import copy
import math

import numpy as np
import pytest
import torch

from mdkl import runtime
from mdkl.lm.rollout import completion_logprobs
from mdkl.lm.trainer import LMConfig, train
from mdkl.mara import mara_forward_target, mara_target
from mdkl.targets import forward_kl_target, reverse_kl_target
from mdkl.tasks import naming, naming_world
from mdkl.tasks.naming_world import Category, NamingConfig, World

TINY = NamingConfig(n_categories=4, n_held_out=1, n_answers=6, n_top=2, n_docs=3000, hidden_size=32, n_layers=1,
                    n_heads=2, intermediate_size=64, steps=400, batch_size=32, lr=1e-2)


@pytest.fixture(scope="module")
def tiny():
    return naming_world.load_naming_lm(TINY, progress=False)


def _cat(answers=("ab", "cd", "ef"), quality=(1.0, 1.0, 0.5), long=(False, False, True), bias=0.0, name="x",
         p=None, held_out=False):
    n = len(answers)
    return Category(name, tuple(answers), tuple(quality), tuple(long),
                    tuple(q + bias * lg for q, lg in zip(quality, long)),
                    tuple(p or [1.0 / max(n, 1)] * n), held_out)


# ---------------------------------------------------------------------------------------------- world
def test_the_default_world_is_the_documented_one():
    cfg = NamingConfig()
    w = naming_world.make_world(cfg)
    assert naming_world.make_world(NamingConfig()) is w  # built once per config
    assert len(w.categories) == 16 and w.held_out == [12, 13, 14, 15] and w.train == list(range(12))
    answers = [a for c in w.categories for a in c.answers]
    assert len(answers) == len(set(answers)) == 16 * 20
    assert not set(answers) & {c.name for c in w.categories}
    for c in w.categories:
        q, lg, pr = np.array(c.quality), np.array(c.long), np.array(c.proxy)
        assert (q == 1.0).sum() == 4 and (q == 0.6).sum() == 8 and (q == 0.2).sum() == 8
        assert not lg[q == 1.0].any() and lg[q == 0.6].sum() == 4 and lg[q == 0.2].sum() == 4
        assert all(len(a) == (6 if long else 4) for a, long in zip(c.answers, lg))
        np.testing.assert_allclose(pr, q + 0.5 * lg)
        assert pr.max() == pytest.approx(1.1) and c.top.sum() == 4  # a long middle answer beats every top one
        zipf = np.sort(np.array(c.corpus_p))[::-1]
        np.testing.assert_allclose(zipf / zipf[0], 1.0 / np.arange(1, 21))
        assert c.prompt == f"Name a {c.name}."
    assert w.reward_range == pytest.approx((0.0, 1.1)) and w.max_answer_chars == 6
    other = naming_world.make_world(NamingConfig(seed=1))
    assert other.categories[0].answers != w.categories[0].answers


def test_the_corpus_follows_the_world():
    cfg = NamingConfig(n_docs=4000)
    w = naming_world.make_world(cfg)
    docs = naming_world.generate_corpus(cfg)
    assert docs == naming_world.generate_corpus(cfg) and len(docs) == 4000
    by_prompt = {c.prompt: c for c in w.categories}
    invalid = sum(a not in by_prompt[p].answers for p, a in docs)
    assert abs(invalid / len(docs) - cfg.p_invalid) < 0.015
    c = w.categories[0]
    counts = np.array([sum(1 for p, a in docs if p == c.prompt and a == x) for x in c.answers])
    top = int(np.argmax(c.corpus_p))
    assert counts[top] == counts.max()  # the corpus's favourite is the Zipf rank 1


@pytest.mark.parametrize("bad, match", [
    (dict(n_answers=0), "no valid answer"), (dict(n_held_out=16), "at least one category"),
    (dict(n_top=0), "n_top"), (dict(bias=-0.1), "bias"), (dict(tiers=(1.0, float("nan"), 0.2)), "finite"),
    (dict(p_invalid=1.0), "p_invalid"),
])
def test_bad_configs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        NamingConfig(**bad)


def test_a_world_too_large_for_its_words_is_refused():
    with pytest.raises(ValueError, match="only .* are left"):
        naming_world.make_world(NamingConfig(n_categories=300, n_held_out=1, n_answers=20, n_top=20))


def test_bad_categories_and_worlds_are_refused():
    with pytest.raises(ValueError, match="no valid answer"):
        _cat(answers=(), quality=(), long=())
    with pytest.raises(ValueError, match="distinct"):
        _cat(answers=("ab", "ab", "cd"))
    with pytest.raises(ValueError, match="quality has 2 entries"):
        _cat(quality=(1.0, 0.5))
    with pytest.raises(ValueError, match="probability vector"):
        _cat(p=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="two categories"):
        World((_cat(name="x"), _cat(name="y")))
    with pytest.raises(ValueError, match="at least one category"):
        World(())


# ---------------------------------------------------------------------------------------------- parser
def test_the_valid_set_is_exactly_the_enumeration():
    """Each category's parser accepts exactly its enumerated answers: every answer parses to its
    index, every other category's answer is invalid, and no string one edit away from an answer
    (insertion, deletion, substitution from an alphabet of letters, upper case, whitespace,
    punctuation) is valid unless it is itself one of the category's answers."""
    w = naming_world.make_world(NamingConfig())
    alphabet = sorted(set("abcdefghijklmnopqrstuvwxyzAEIOUBK \n\t.,!-'") | {"\u00a0"})
    checked = 0
    for c in w.categories:
        valid = {a: i for i, a in enumerate(c.answers)}
        assert all(naming.parse_answer(a, c) == i for a, i in valid.items())
        others = [a for d in w.categories if d is not c for a in d.answers]
        assert all(naming.parse_answer(a, c) == naming.INVALID for a in others)
        for t in c.answers:
            for i in range(len(t) + 1):
                edits = [t[:i] + ch + t[i:] for ch in alphabet]
                if i < len(t):
                    edits.append(t[:i] + t[i + 1:])
                    edits += [t[:i] + ch + t[i + 1:] for ch in alphabet]
                for e in edits:
                    checked += 1
                    assert naming.parse_answer(e, c) == valid.get(e, naming.INVALID), repr(e)
    assert checked > 100_000


@pytest.mark.parametrize("bad", [None, "", " ", 3, 1.5, b"\xff\xfe", object(), ["ab"]])
def test_the_parser_never_raises(bad):
    assert naming.parse_answer(bad, _cat()) == naming.INVALID
    assert naming.parse_answer(b"cd", _cat()) == 1  # bytes are decoded


def test_every_answer_is_one_token_per_byte_and_fits_a_completion(tiny):
    """The tokenizer is byte level without merges: each answer + end-of-turn is len(answer) + 1
    tokens, its only token sequence, within the task's max_new_tokens."""
    _, tok = tiny
    assert len(tok) == naming_world.byte_vocab_size() == 262
    task = naming.NamingTask(TINY)
    for c in task.world.categories:
        for a in c.answers:
            ids = tok(a + tok.eos_token, add_special_tokens=False)["input_ids"]
            assert len(ids) == len(a) + 1 <= task.max_new_tokens
            assert tok.decode(ids, skip_special_tokens=True) == a
    assert naming.NamingTask().max_new_tokens == 7


# ---------------------------------------------------------------------------------------------- task
def test_rewards_metrics_and_outcomes():
    task = naming.NamingTask()
    w = task.world
    c0, c1 = w.categories[0], w.categories[1]
    texts = [c0.answers[0], c0.answers[1], c1.answers[0], "", None, c0.answers[0] + " "]
    r = task.rewards(texts, prompt_index=[0, 0, 0, 0, 0, 1])
    assert r.dtype == torch.float32
    assert r.tolist() == pytest.approx([c0.proxy[0], c0.proxy[1], 0.0, 0.0, 0.0, 0.0])
    rt = naming.NamingTask(reward="true").rewards(texts[:2], prompt_index=[0, 0])
    assert rt.tolist() == pytest.approx([c0.quality[0], c0.quality[1]])
    assert task.rewards([c1.answers[0]], prompt_index=[1]).item() == pytest.approx(c1.proxy[0])
    with pytest.raises(ValueError, match="needs prompt_index"):
        task.rewards(texts)
    with pytest.raises(ValueError, match="positions in prompts"):
        task.rewards(["x"], prompt_index=[12])  # a held-out category is never a training prompt
    m = task.metrics(texts)
    assert m["answered"] == pytest.approx(3 / 6) and m["empty"] == pytest.approx(2 / 6)
    assert m["long"] == pytest.approx(np.mean([c0.long[0], c0.long[1], c1.long[0]]))
    o = task.outcomes(texts)
    assert (o[3:] == -1).all() and len(set(o[:3])) == 3
    assert o[2] == 20 + c1.answers.index(c1.answers[0])  # one flat id per answer of the world
    assert task.reward_range == pytest.approx((0.0, 1.1))
    assert naming.NamingTask(reward="true").reward_range == (0.0, 1.0)
    with pytest.raises(ValueError, match="reward must be"):
        naming.NamingTask(reward="judge")


def test_distribution_metrics_by_hand():
    c = _cat(bias=0.5)  # answers ab, cd (top), ef (long, proxy 1.0)
    p = np.array([0.5, 0.2, 0.2])  # 0.1 invalid
    d = naming.distribution_metrics(p, c, k=2, ref=[0.3, 0.3, 0.3])
    q = p / 0.9
    assert d["valid"] == pytest.approx(0.9) and d["entropy"] == pytest.approx(-(q * np.log(q)).sum())
    assert d["distinct"] == pytest.approx(sum(1 - (1 - x) ** 2 for x in p))
    assert d["top_mass"] == pytest.approx(0.7) and d["top_coverage"] == pytest.approx(0.4)
    assert d["top_seen"] == pytest.approx((1 - 0.25 + 1 - 0.64) / 2) and d["long"] == pytest.approx(0.2)
    assert d["proxy"] == pytest.approx(0.5 + 0.2 + 0.2 * 1.0) and d["true"] == pytest.approx(0.5 + 0.2 + 0.1)
    kl = sum(a * math.log(a / b) for a, b in zip([0.5, 0.2, 0.2, 0.1], [0.3, 0.3, 0.3, 0.1]))
    assert d["kl"] == pytest.approx(kl)
    assert naming.distribution_metrics(p, c, ref=p)["kl"] == pytest.approx(0.0, abs=1e-15)
    nothing = naming.distribution_metrics(np.zeros(3), c)
    assert nothing["valid"] == 0 and math.isnan(nothing["entropy"]) and nothing["proxy"] == 0
    with pytest.raises(ValueError, match="one probability per answer"):
        naming.distribution_metrics([0.5, 0.5], c)
    with pytest.raises(ValueError, match="at most 1"):
        naming.distribution_metrics([0.5, 0.5, 0.5], c)


# ---------------------------------------------------------------------------------------------- targets
REF = np.array([0.5, 0.3, 0.1])  # invalid mass 0.1
R = np.array([1.0, 1.0, 0.5])


def test_the_targets_by_hand():
    b = 0.5
    z = 0.5 * math.e ** 2 + 0.3 * math.e ** 2 + 0.1 * math.e + 0.1
    np.testing.assert_allclose(naming.target_probs(REF, R, b, "vanilla reverse"),
                               [0.5 * math.e ** 2 / z, 0.3 * math.e ** 2 / z, 0.1 * math.e / z], rtol=1e-12)
    # Rem. B.3: the good set {R >= tau} gets pi_ref(z) exp(R(z) / beta) each, z = the best-supported good answer
    zm = 2 * 0.5 * math.e ** 2 + 0.1 * math.e + 0.1
    np.testing.assert_allclose(naming.target_probs(REF, R, b, "MARA reverse", tau=1.0),
                               [0.5 * math.e ** 2 / zm, 0.5 * math.e ** 2 / zm, 0.1 * math.e / zm], rtol=1e-12)
    fwd = naming.target_probs(REF, R, b, "MARA forward", tau=1.0)
    assert fwd[0] == pytest.approx(fwd[1], rel=1e-9)  # Alg. 2 under forward KL: uniform over the good set too
    g = naming.target_probs(REF, R, b, "vanilla forward")
    assert g[0] / g[1] == pytest.approx(0.5 / 0.3, rel=1e-9)  # equal rewards keep the reference ratio (Rem. 4.3)


@pytest.mark.parametrize("method", naming.TARGETS)
def test_lumping_the_invalid_strings_is_exact(method):
    """The target computed with the invalid mass as one outcome equals the target over an expanded
    space where that mass is spread over several invalid strings (all reward 0), answer for answer."""
    spread = np.array([0.05, 0.03, 0.02])
    full_ref = np.concatenate([REF, spread])
    full_r = np.concatenate([R, np.zeros(3)])
    fn = {"vanilla reverse": lambda: reverse_kl_target(full_ref, full_r, 0.3),
          "vanilla forward": lambda: forward_kl_target(full_ref, full_r, 0.3),
          "MARA reverse": lambda: mara_target(full_ref, full_r, 0.3, 1.0),
          "MARA forward": lambda: mara_forward_target(full_ref, full_r, 0.3, 1.0)}[method]
    np.testing.assert_allclose(naming.target_probs(REF, R, 0.3, method, tau=1.0), fn()[:3], rtol=1e-9, atol=1e-15)


def test_all_equal_rewards_keep_the_reference_and_mara_is_uniform():
    r = np.ones(3)
    for method in ("vanilla reverse", "vanilla forward"):
        t = naming.target_probs(REF, r, 0.1, method)
        np.testing.assert_allclose(t / t.sum(), REF / REF.sum(), rtol=1e-9)
    for method in ("MARA reverse", "MARA forward"):
        t = naming.target_probs(REF, r, 0.1, method, tau=1.0)
        np.testing.assert_allclose(t / t.sum(), [1 / 3] * 3, rtol=1e-9)
    c = _cat(quality=(1.0, 1.0, 1.0))
    assert c.top.all()  # with equal quality every answer is top: coverage is over all of them


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), float("inf")])
def test_a_beta_of_zero_is_refused(beta):
    with pytest.raises(ValueError, match="beta"):
        naming.target_probs(REF, R, beta, "vanilla reverse")


def test_bad_target_input_is_refused():
    with pytest.raises(ValueError, match="unknown target"):
        naming.target_probs(REF, R, 0.1, "MARA sideways")
    with pytest.raises(ValueError, match="needs tau"):
        naming.target_probs(REF, R, 0.1, "MARA reverse")
    with pytest.raises(ValueError, match="above every answer"):
        naming.target_probs(REF, R, 0.1, "MARA reverse", tau=2.0)
    with pytest.raises(ValueError, match="one entry per answer"):
        naming.target_probs(REF, R[:2], 0.1, "vanilla reverse")


def test_targets_table_rows(tiny):
    model, tok = tiny
    task = naming.NamingTask(TINY)
    ref = naming.answer_probs(model, tok, task.world)
    t = naming.targets_table(task, ref, [0.05, 0.5])
    assert list(t.method) == ["reference"] + [m for m in naming.TARGETS for _ in range(2)]
    assert t.kl.iloc[0] == pytest.approx(0.0, abs=1e-12)
    mara = t[t.method == "MARA reverse"]
    assert (mara.top_coverage > 0.999).all()  # tau = top quality: every top answer gets the same mass
    van = t[(t.method == "vanilla reverse")].set_index("beta")
    assert van.loc[0.05, "proxy"] > van.loc[0.5, "proxy"] > t.proxy.iloc[0]


# ---------------------------------------------------------------------------------------------- exact vs sampled
def test_answer_probs_are_the_teacher_forced_probabilities(tiny):
    model, tok = tiny
    w = naming_world.make_world(TINY)
    probs = naming.answer_probs(model, tok, w)
    for c, p in zip(w.categories, probs):
        lp = completion_logprobs(model, tok, naming_world.category_prompt(tok, c), list(c.answers))
        np.testing.assert_allclose(p, np.exp(lp.numpy()), rtol=1e-6)
        assert 0 < p.sum() <= 1
    assert naming.answer_probs(model, tok, w, [1])[0] == pytest.approx(probs[1])


def test_exact_metrics_equal_sampled_ones_within_noise(tiny):
    model, tok = tiny
    task = naming.NamingTask(TINY)
    chk = naming.sampled_check(model, tok, task, 600, seed=3)
    assert len(chk) == 4 and (chk.valid > 0.3).all()  # the tiny model learned most of its answers
    for m in ("valid", "top_mass", "long", "proxy", "true"):
        tol = 4.5 * np.maximum(chk[f"{m}_se"], 1 / 600)
        assert (abs(chk[f"{m}_mc"] - chk[m]) <= tol).all(), (m, chk[[m, f"{m}_mc", f"{m}_se"]])
    ex = task.exact_metrics(model, tok)
    assert ex["id_valid"] == pytest.approx(chk.valid[chk.split == "train"].mean())
    assert ex["ood_true"] == pytest.approx(chk.true[chk.split == "held out"].mean())
    assert math.isnan(ex["id_kl"])  # no reference given
    ex_ref = task.with_reference(model, tok).exact_metrics(model, tok)
    assert ex_ref["id_kl"] == pytest.approx(0.0, abs=1e-12) and ex_ref["ood_kl"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="n must be >= 2"):
        naming.sampled_check(model, tok, task, 1)


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("mara", ["none", "auto"])
def test_lm_train_smoke(tiny, mara):
    model, tok = tiny
    task = naming.NamingTask(TINY).with_reference(model, tok)
    cfg = LMConfig(beta=0.05, kl="reverse", kl_placement="reward", kl_level="sequence", group_size=4,
                   prompts_per_step=2, max_new_tokens=task.max_new_tokens, steps=4, eval_every=2,
                   eval_samples=len(task.world.train), lr=1e-3, tau=1.0, mara=mara)
    res = train(cfg, task, copy.deepcopy(model), tok, progress=False)
    assert list(res.checkpoints.step) == [0, 2, 4] and len(res.history) == 4
    ck = res.checkpoints
    assert ck.id_kl.iloc[0] == pytest.approx(0.0, abs=1e-12) and ck.id_kl.iloc[-1] > 0
    assert np.isfinite(ck[[f"{s}_{m}" for s in ("id", "ood") for m in naming.METRICS]].to_numpy()).all()
    assert {"answered", "empty", "long", "distinct", "mara_anchored", "zero_var_frac"} <= set(res.history.columns)
    if mara == "none":
        assert (res.history.mara_anchored == 0).all()
    with pytest.raises(ValueError, match="above every reward"):
        train(cfg.replace(mara="auto", tau=2.0), task, copy.deepcopy(model), tok, progress=False)


def test_train_naming_is_cached(tmp_path, monkeypatch, tiny):
    model, tok = tiny
    monkeypatch.setattr(runtime, "CACHE_DIR", tmp_path)
    assert not naming_world.is_pretrained(TINY)
    monkeypatch.setattr(naming, "load_naming_lm", lambda cfg, progress=True: (copy.deepcopy(model), tok))
    task = naming.NamingTask(TINY)
    cfg = LMConfig(beta=0.05, group_size=2, prompts_per_step=2, max_new_tokens=task.max_new_tokens, steps=2,
                   eval_every=2, eval_samples=3, lr=1e-3, tau=1.0)
    a = naming.train_naming(cfg, task, progress=False)
    assert len(list(tmp_path.glob("naming-run-*.pkl"))) == 1
    b = naming.train_naming(cfg, task, progress=False)
    assert b.checkpoints.equals(a.checkpoints)
    assert a.checkpoints.id_kl.iloc[0] == pytest.approx(0.0, abs=1e-12)  # the reference was set from the model
    with pytest.raises(ValueError, match="model='small'"):
        naming.train_naming(cfg.replace(model="smollm2"), task)
