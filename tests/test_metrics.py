"""Evaluation metrics (mdkl.metrics) against scipy and a numerical delta method."""

import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from mdkl.metrics import binary_entropy_with_se, coverage, entropy, is_multimodal, max_min_ratio


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
