"""The toy report's measures, on hand-made inputs: each counts what its name says and nothing else."""

import numpy as np
import pytest
from PIL import Image

from vehicle_diff.toy_report import (
    box_iou,
    chance_map,
    color_precision,
    detection_scores,
    paired_difference,
    thumbnail_features,
)


def test_box_iou():
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(2 / 6)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_detection_scores_count_misses_wrong_places_and_empty_images():
    truth = [(0, 0, 10, 10)] * 4
    predicted = [(0, 0, 10, 10), (1, 1, 10, 10), (20, 20, 30, 30), None]  # hit, hit (IoU .81), wrong place, missed
    assert detection_scores(predicted, truth) == {
        "recall": 0.5,
        "precision": pytest.approx(2 / 3, abs=1e-4),
        "images": 4,
    }
    assert detection_scores([None, None], truth[:2])["precision"] is None


def test_color_precision_splits_kept_from_color_rejections_only():
    rows = [
        {"color": "red", "oracle_color": "red", "kept": True, "reject_reason": None},
        {"color": "red", "oracle_color": "blue", "kept": True, "reject_reason": None},
        {"color": "blue", "oracle_color": "white", "kept": False, "reject_reason": "wrong_color"},
        {"color": "blue", "oracle_color": "blue", "kept": False, "reject_reason": "too_small"},  # not a color decision
    ]
    assert color_precision(rows) == {"kept": 0.5, "rejected": 0.0, "kept_images": 2, "rejected_images": 1}
    assert color_precision([])["kept"] is None


def test_thumbnails_see_light_and_color_cast():
    dark, bright = Image.new("RGB", (64, 48), (10, 10, 10)), Image.new("RGB", (64, 48), (200, 180, 20))
    features = thumbnail_features([dark, bright])
    assert features.shape == (2, 48)
    assert features[0].max() == pytest.approx(10 / 255) and features[1][:3] == pytest.approx(
        [200 / 255, 180 / 255, 20 / 255]
    )


def test_chance_map_matches_the_expected_precision_of_a_random_ranking():
    # one query, gallery of 1 match among 4 (other camera): a random rank r in 1..4 gives AP 1/r
    chance = chance_map([1], [1, 2, 3, 4], [0], [1, 1, 1, 1], draws=400)
    assert chance == pytest.approx(np.mean([1, 1 / 2, 1 / 3, 1 / 4]), abs=0.04)


def test_paired_difference_is_the_mean_gap_and_its_standard_error():
    result = paired_difference(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0.6, 0.4, 0.7, 0.5]))
    assert result["mean"] == pytest.approx(0.05) and result["queries"] == 4
    assert result["stderr"] == pytest.approx(np.std([0.1, -0.1, 0.2, 0.0], ddof=1) / 2, abs=1e-4)
