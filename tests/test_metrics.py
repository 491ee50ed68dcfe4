"""Evaluation metrics (mdkl.metrics) against scipy and a numerical delta method."""

import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from mdkl.metrics import (EAD_VOCAB_SIZE, binary_entropy_with_se, bootstrap_sem, coverage, distinct_answers, ead,
                          entropy, equivalence_accuracy, is_multimodal, max_min_ratio, mean_ead, n_distinct,
                          normalize_answer, semantic_diversity, words)


def test_entropy_matches_scipy_and_handles_zeros():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(7), size=4)
    p[0, :3] = 0.0
    p[0] /= p[0].sum()
    np.testing.assert_allclose(entropy(p), scipy_entropy(p, axis=-1), rtol=1e-12)
    assert entropy([1.0, 0.0]) == 0.0
    assert entropy(np.full(5, 0.2)) == pytest.approx(math.log(5))


def test_coverage_and_multimodality():
    r = np.array([1.0, 1.0, 0.2, 0.9])
    pi = np.array([0.5, 0.1, 0.3, 0.1])
    assert coverage(pi, r, 0.9) == pytest.approx(0.2)
    assert coverage(pi, r, 1.0) == pytest.approx(0.2)
    assert max_min_ratio(pi, r >= 0.9) == pytest.approx(5.0)
    assert not is_multimodal(pi, r, 0.9)
    assert is_multimodal([0.3, 0.3, 0.1, 0.3], r, 0.9)
    assert coverage([0.5, 0.0, 0.5, 0.0], r, 1.0) == 0.0  # a dropped good output
    with pytest.raises(ValueError, match="choose tau <= max R"):
        coverage(pi, r, 1.5)
    with pytest.raises(ValueError, match="empty mask"):
        max_min_ratio(pi, np.zeros(4, bool))


@pytest.mark.parametrize("n_a,n_b", [(30, 70), (5, 495), (250, 250)])
def test_binary_entropy_with_se_delta_method(n_a, n_b):
    h, se = binary_entropy_with_se(n_a, n_b)
    n, p = n_a + n_b, n_a / (n_a + n_b)

    def hb(q):
        return -q * math.log(q) - (1 - q) * math.log(1 - q)

    assert h == pytest.approx(hb(p), rel=1e-12)
    eps = 1e-6
    dh = (hb(p + eps) - hb(p - eps)) / (2 * eps)
    assert se == pytest.approx(abs(dh) * math.sqrt(p * (1 - p) / n), rel=1e-6, abs=1e-9)


def test_binary_entropy_edge_cases():
    assert binary_entropy_with_se(10, 0) == (0.0, 0.0)
    h, se = binary_entropy_with_se(0, 0)
    assert math.isnan(h) and math.isnan(se)


# ---- text diversity (creative QA) ----------------------------------------------------------------
def test_words_tokenization():
    assert words("Hello, World!  It's 3 o'clock...") == ["hello", "world", "it's", "3", "o'clock"]
    assert words("") == [] and words("?!") == []


def test_ead_closed_form_and_distinct_limit():
    texts = ["the cat sat", "the cat ran"]  # unigrams: N = 4 distinct of C = 6; bigrams: 3 of 4
    for n, n_dist, c in [(1, 4, 6), (2, 3, 4), (3, 2, 2)]:
        for v in (5, 100, EAD_VOCAB_SIZE):
            expected = n_dist / (v * (1 - ((v - 1) / v) ** c))
            assert ead(texts, n, vocab_size=v) == pytest.approx(expected, rel=1e-9)  # naive form loses digits
    assert ead(texts, 1) == pytest.approx(4 / 6, rel=1e-3)  # C << V: EAD ~ Distinct-n
    assert ead(texts, 4) == 0.0  # no text has 4 words
    assert ead(["", "the cat"], 1) == ead(["the cat"], 1)  # empty generations add no n-grams
    assert mean_ead(texts, n_max=3) == pytest.approx(np.mean([ead(texts, n) for n in (1, 2, 3)]))
    # repetition lowers EAD; case and punctuation do not matter
    assert ead(["a b c d"], 1) > ead(["a a a a"], 1)
    assert ead(["The cat."], 1) == ead(["the CAT"], 1)


def test_ead_bad_input():
    with pytest.raises(ValueError, match="empty text list"):
        ead([], 1)
    with pytest.raises(ValueError, match="not one string"):
        mean_ead("the cat")
    with pytest.raises(ValueError, match="not str"):
        ead(["ok", None], 1)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        ead(["a"], 0)
    with pytest.raises(ValueError, match="vocab_size"):
        ead(["a"], 1, vocab_size=0)


def _unit(x):
    x = np.asarray(x, dtype=float)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_semantic_diversity():
    e = np.eye(3)  # orthogonal: cosine distance 1 everywhere
    assert semantic_diversity(e) == pytest.approx(1.0)
    assert semantic_diversity(np.ones((4, 5))) == pytest.approx(0.0, abs=1e-12)
    e = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])  # rows re-normalised: sims 0, -1, 0
    assert semantic_diversity(e) == pytest.approx(1 - (-1 / 3))
    with pytest.raises(ValueError, match="at least 2 texts"):
        semantic_diversity(np.ones((1, 3)))
    with pytest.raises(ValueError, match="all-zero row"):
        semantic_diversity(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2-D array"):
        semantic_diversity(np.ones(3))


def test_distinct_answers_greedy_partition_against_first_member():
    assert normalize_answer("An Apple!") == normalize_answer("apple") == "apple"
    assert normalize_answer("The") == "the"
    # a ~ b (cos 0.9), b ~ c (cos 0.9) but a !~ c (cos 0.62): c is compared with the class's first
    # member a only (NoveltyBench), so it opens a new class
    ang = np.deg2rad([0.0, 25.8, 51.6, 180.0])
    e = np.stack([np.cos(ang), np.sin(ang)], 1)
    texts = ["alpha", "beta", "gamma", "The alpha."]
    labels = distinct_answers(texts, e, threshold=0.85)
    assert labels.tolist() == [0, 0, 1, 0]  # last: normalised text matches the first
    assert n_distinct(texts, e, threshold=0.85) == 2
    assert n_distinct(texts, e, threshold=1.0) == 3  # only the exact text match merges
    assert n_distinct(texts, e, threshold=-1.0) == 1
    with pytest.raises(ValueError, match="embedding rows"):
        distinct_answers(texts, e[:3])
    with pytest.raises(ValueError, match="empty text list"):
        n_distinct([], np.ones((0, 2)))


def test_equivalence_accuracy_over_thresholds():
    ea = _unit([[1, 0], [1, 0], [1, 0], [1, 0]])
    eb = _unit([[1, 0.1], [1, 1], [0, 1], [1, 0]])  # cos ~0.995, 0.707, 0, 1
    labels = [1, 1, 0, 1]
    acc = equivalence_accuracy(["a", "b", "c", "x"], ["a2", "b2", "c2", "X!"], ea, eb, labels, [0.5, 0.8, 0.999])
    np.testing.assert_allclose(acc, [1.0, 0.75, 0.5])
    with pytest.raises(ValueError, match="one entry per pair"):
        equivalence_accuracy(["a"], ["b"], ea, eb, labels, [0.5])


def test_bootstrap_sem_matches_analytic_sem():
    rng = np.random.default_rng(1)
    v = rng.normal(size=400)
    analytic = v.std(ddof=1) / np.sqrt(v.size)
    assert bootstrap_sem(v, n_boot=4000) == pytest.approx(analytic, rel=0.06)
    assert bootstrap_sem(v) == bootstrap_sem(v)  # seeded
    assert bootstrap_sem([3.0]) == 0.0
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_sem([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_sem([1.0, float("nan")])


def test_hypervolume_matches_a_brute_force_grid_and_refuses_bad_points():
    from mdkl.metrics import hypervolume
    assert hypervolume([1.0], [0.5]) == 0.5
    assert hypervolume([1.0, 0.5], [0.2, 0.6]) == pytest.approx(0.4)  # 1 x 0.2 + 0.5 x 0.4 by hand
    assert hypervolume([], []) == 0.0
    rng = np.random.default_rng(0)
    r, h = rng.uniform(0, 1, 12), rng.uniform(0, 0.7, 12)
    gr, gh = np.meshgrid(np.linspace(0, 1, 801)[1:] - 1 / 1600, np.linspace(0, 0.7, 801)[1:] - 0.7 / 1600)
    covered = ((gr[..., None] <= r) & (gh[..., None] <= h)).any(-1).mean() * 0.7
    assert hypervolume(r, h) == pytest.approx(covered, abs=2e-3)
    # a dominated point adds nothing; the front alone gives the same volume
    from mdkl.metrics import pareto_front
    front = pareto_front(r, h)
    assert hypervolume(r[front], h[front]) == pytest.approx(hypervolume(r, h), abs=1e-12)
    with pytest.raises(ValueError, match="finite"):
        hypervolume([1.0, float("nan")], [0.1, 0.2])
    with pytest.raises(ValueError, match="one value per point"):
        hypervolume([1.0], [0.1, 0.2])
