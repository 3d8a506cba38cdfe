"""length_model.metrics on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from length_model.metrics import (POSTER, beats_poster, calibrated_ceiling,
                                  classification_metrics, decode_cost_metrics,
                                  lognormal_bucket_probs, ranking_metrics)


def test_perfect_classifier():
    y = np.array([0, 1, 2, 2, 1, 0])
    probs = np.eye(3)[y]
    m = classification_metrics(y, probs)
    assert m["accuracy"] == 1.0 and m["f1_weighted"] == 1.0 and m["mcc"] == 1.0
    assert m["auroc_ovr"] == 1.0


def test_classifier_by_hand():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])  # pred 0,1,1,0
    m = classification_metrics(y, probs)
    assert m["accuracy"] == 0.5 and m["mcc"] == 0.0
    # OvR AUROC of class 1 on scores [.1,.6,.7,.2]: pairs (pos > neg) = 3 of 4
    assert m["auroc_ovr"] == pytest.approx(0.75)


def test_ranking_metrics():
    y = np.array([1, 2, 3, 4, 5])
    assert ranking_metrics(y, y * 10.0)["kendall_tau"] == pytest.approx(1.0)
    assert ranking_metrics(y, -y)["spearman"] == pytest.approx(-1.0)
    # one discordant pair of 10: tau = (9 - 1) / 10
    assert ranking_metrics(y, np.array([1, 2, 3, 5, 4]))["kendall_tau"] == pytest.approx(0.8)


def test_decode_cost_metrics():
    y = np.array([10.0, 20.0, 30.0, 40.0])
    exact = decode_cost_metrics(y, y, group_size=2, num_groups=50)
    assert exact["mae_tokens"] == 0 and exact["group2_rel_err_mean"] == 0
    double = decode_cost_metrics(y, 2 * y, group_size=2, num_groups=50)
    assert double["group2_rel_err_mean"] == pytest.approx(1.0)
    assert double["rel_err_median"] == pytest.approx(1.0)
    assert double["sum_bias"] == pytest.approx(1.0)
    assert double["mae_tokens"] == pytest.approx(25.0)


def test_beats_poster():
    better = {k: v + 0.01 for k, v in POSTER.items()}
    assert all(beats_poster(better).values())
    assert not any(beats_poster(dict(POSTER)).values())


def test_lognormal_bucket_probs_sum_to_one():
    p = lognormal_bucket_probs(np.array([2.0, 6.0]), 0.8, np.array([10.0, 100.0, 1000.0]))
    assert p.shape == (2, 4)
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert p[0].argmax() == 0 and p[1].argmax() == 2


def test_calibrated_ceiling_links_noise_to_every_figure():
    log_means = np.log1p(np.random.default_rng(3).lognormal(5.3, 0.9, size=4000))
    rows = calibrated_ceiling(log_means, [0.2, 0.7, 2.0], seed=1)
    assert [r["sigma_log"] for r in rows] == [0.2, 0.7, 2.0]
    for key in ("kendall_tau", "auroc_ovr", "accuracy"):
        assert rows[0][key] > rows[1][key] > rows[2][key]
    assert rows[2]["accuracy"] < 0.1 and rows[2]["auroc_ovr"] < 0.65  # near chance (0.05, 0.5)
    assert calibrated_ceiling(log_means, [0.7], seed=1) == rows[1:2]  # seeded
