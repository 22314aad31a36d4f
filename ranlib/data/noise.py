"""Synthetic label noise for the paper's Table 5 (noise model of Sukhbaatar et al., 2014).

The paper corrupts CIFAR-10 training labels with a K x K transition matrix Q that keeps a label with
probability r (the clean-label ratio) and moves it to each other class with probability (1 - r)/(K - 1);
the noise level is 1 - r. The paper does not say whether labels are drawn per sample or an exact count is
flipped, nor which seed: here every training label is drawn independently from its row of Q with a numpy
Generator seeded by ``seed``, so the achieved rate is binomial around the level and is recorded with the
empirical transition matrix. Only training labels are ever corrupted; the test set stays clean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ranlib.errors import ConfigError, DataFormatError

__all__ = ["NoiseStats", "apply_label_noise", "check_noise_level", "transition_matrix"]


def check_noise_level(noise_level: float) -> float:
    """The noise level as a float in [0, 1), or one clear ConfigError."""
    try:
        level = float(noise_level)
    except (TypeError, ValueError):
        level = math.nan
    if not 0.0 <= level < 1.0:  # also rejects NaN
        raise ConfigError(
            f"noise level {noise_level!r} is outside [0, 1): give the fraction of corrupted training labels, "
            "e.g. 0.1, 0.3, 0.5 or 0.7 as in Table 5"
        )
    return level


def transition_matrix(noise_level: float, num_classes: int = 10) -> np.ndarray:
    """Q[i, j] = P(noisy label j | clean label i): r = 1 - noise_level on the diagonal, (1 - r)/(K - 1) elsewhere."""
    level = check_noise_level(noise_level)
    if int(num_classes) != num_classes or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    k = int(num_classes)
    q = np.full((k, k), level / (k - 1), dtype=np.float64)
    np.fill_diagonal(q, 1.0 - level)
    return q


@dataclass(frozen=True)
class NoiseStats:
    """What the noise actually did to one training set: recorded in every noisy run's results."""

    level: float
    seed: int
    achieved_rate: float  # fraction of training labels that changed
    counts: np.ndarray  # counts[i, j] = number of samples with clean label i and noisy label j
    transition_matrix: np.ndarray  # counts row-normalised: the empirical Q

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "seed": self.seed,
            "achieved_rate": self.achieved_rate,
            "transition_matrix": self.transition_matrix.tolist(),
            "counts": self.counts.tolist(),
        }


def apply_label_noise(
    labels, noise_level: float, seed: int, num_classes: int = 10
) -> tuple[np.ndarray, NoiseStats]:
    """Draw a noisy label for every training label from its row of Q; returns (noisy labels, stats).

    ``labels`` are the clean training labels (any integer array-like); they are not modified.
    """
    q = transition_matrix(noise_level, num_classes)
    clean = np.asarray(labels)
    if clean.ndim != 1 or not np.issubdtype(clean.dtype, np.integer):
        raise DataFormatError(f"labels must be a 1-D integer array, got dtype {clean.dtype} and shape {clean.shape}")
    clean = clean.astype(np.int64)
    if clean.size and (clean.min() < 0 or clean.max() >= num_classes):
        raise DataFormatError(
            f"labels must lie in [0, {num_classes}), found {clean.min()}..{clean.max()}: pass the right num_classes"
        )
    # Inverse-CDF sampling, one uniform per sample: noisy = first j with cdf[clean, j] > u.
    cdf = np.cumsum(q, axis=1)
    cdf[:, -1] = 1.0  # guard against a row summing to 1 - 1e-16
    u = np.random.default_rng(seed).random(clean.size)
    noisy = (u[:, None] >= cdf[clean]).sum(axis=1).astype(np.int64)

    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (clean, noisy), 1)
    rows = counts.sum(axis=1, keepdims=True)
    empirical = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    achieved = float((noisy != clean).mean()) if clean.size else 0.0
    stats = NoiseStats(float(noise_level), int(seed), achieved, counts, empirical)
    return noisy, stats
