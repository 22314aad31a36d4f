"""Label noise (Table 5): Q's form, per-sample draws that match Q statistically, determinism, bad input."""

import json

import numpy as np
import pytest

from ranlib.data.noise import apply_label_noise, transition_matrix
from ranlib.errors import ConfigError, DataFormatError, RanlibError

# Chi-square critical value for 90 degrees of freedom (10 rows x 9 free cells) at p = 0.001.
CHI2_90_P001 = 124.84
N_PER_CLASS = 5000  # the size of CIFAR-10's training set


def cifar_like_labels(seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(10), N_PER_CLASS))


def chi_square_against_q(counts, q):
    expected = counts.sum(axis=1, keepdims=True) * q
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("level", [0.1, 0.3, 0.5, 0.7])
def test_transition_matrix_is_sukhbaatar_q(level):
    q = transition_matrix(level)
    assert q.shape == (10, 10)
    np.testing.assert_allclose(q.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(q), 1 - level)
    off = q[~np.eye(10, dtype=bool)]
    np.testing.assert_allclose(off, level / 9)


def test_transition_matrix_other_class_count():
    q = transition_matrix(0.5, num_classes=100)
    np.testing.assert_allclose(q[0, 1], 0.5 / 99)
    np.testing.assert_allclose(q.sum(axis=1), 1.0)


@pytest.mark.parametrize("level", [0.1, 0.3, 0.5, 0.7])
def test_noise_matches_q_statistically(level):
    clean = cifar_like_labels()
    noisy, stats = apply_label_noise(clean, level, seed=123)
    n = clean.size
    # Achieved rate: binomial(n, level) -> within 4 standard deviations.
    assert abs(stats.achieved_rate - level) < 4 * np.sqrt(level * (1 - level) / n)
    assert stats.achieved_rate == pytest.approx(float((noisy != clean).mean()))
    # The whole empirical transition table against Q.
    assert stats.counts.sum() == n
    np.testing.assert_array_equal(stats.counts.sum(axis=1), np.bincount(clean, minlength=10))
    assert chi_square_against_q(stats.counts, transition_matrix(level)) < CHI2_90_P001
    np.testing.assert_allclose(stats.transition_matrix, transition_matrix(level), atol=0.03)
    np.testing.assert_allclose(stats.transition_matrix.sum(axis=1), 1.0)


def test_chi_square_check_rejects_a_wrong_noise_model():
    """The statistical check above can fail: a common mistake (resample uniformly over all 10 classes,
    self included, so only 0.9 x level labels change) is rejected."""
    level = 0.5
    clean = cifar_like_labels()
    rng = np.random.default_rng(123)
    wrong = np.where(rng.random(clean.size) < level, rng.integers(0, 10, clean.size), clean)
    counts = np.zeros((10, 10), dtype=np.int64)
    np.add.at(counts, (clean, wrong), 1)
    assert chi_square_against_q(counts, transition_matrix(level)) > CHI2_90_P001


def test_level_zero_changes_nothing():
    clean = cifar_like_labels()
    noisy, stats = apply_label_noise(clean, 0.0, seed=5)
    np.testing.assert_array_equal(noisy, clean)
    assert stats.achieved_rate == 0.0
    np.testing.assert_array_equal(stats.transition_matrix, np.eye(10))


def test_deterministic_given_seed_and_input_untouched():
    clean = cifar_like_labels()
    before = clean.copy()
    a, sa = apply_label_noise(clean, 0.3, seed=7)
    b, sb = apply_label_noise(clean, 0.3, seed=7)
    c, _ = apply_label_noise(clean, 0.3, seed=8)
    np.testing.assert_array_equal(a, b)
    assert sa.to_dict() == sb.to_dict()
    assert (a != c).any()
    np.testing.assert_array_equal(clean, before)
    assert a.dtype == np.int64 and a.shape == clean.shape


def test_stats_to_dict_is_json_with_contract_keys():
    _, stats = apply_label_noise(np.arange(10).repeat(20), 0.3, seed=1)
    d = json.loads(json.dumps(stats.to_dict()))
    assert set(d) == {"level", "seed", "achieved_rate", "transition_matrix", "counts"}
    assert d["level"] == 0.3 and d["seed"] == 1
    assert len(d["transition_matrix"]) == 10 and len(d["counts"][0]) == 10
    assert sum(map(sum, d["counts"])) == 200


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "high"])
def test_noise_level_outside_range_is_a_clear_value_error(bad):
    with pytest.raises(ConfigError, match=r"outside \[0, 1\)") as info:
        apply_label_noise(np.zeros(10, dtype=np.int64), bad, seed=0)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RanlibError)
    with pytest.raises(ConfigError):
        transition_matrix(bad)


def test_labels_out_of_range_are_rejected():
    with pytest.raises(DataFormatError, match="num_classes"):
        apply_label_noise(np.array([0, 3, 12]), 0.1, seed=0, num_classes=10)
