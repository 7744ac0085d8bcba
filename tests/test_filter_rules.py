"""The filter's decisions as pure functions, on hand-made boxes and similarities."""

import numpy as np
import pytest
from vehicle_diff.generation.scoring import (
    Thresholds,
    choose_box,
    close_identity_pairs,
    crop_box,
    decide,
    min_side_threshold,
    near_duplicates,
    predict_color,
)

from vehicle_diff.errors import UserInputError

BIG, SMALL = [0, 0, 600, 400], [10, 10, 300, 300]


def largest(*args, **kwargs):
    return choose_box(*args, rule="largest", **kwargs)


def test_choose_box_largest_rule_prefers_the_largest_confident_vehicle():
    assert largest([SMALL, BIG], [0.9, 0.7], [2, 7], min_confidence=0.65) == 1  # truck counts; larger wins
    assert largest([SMALL, BIG], [0.9, 0.6], [2, 2], min_confidence=0.65) == 0  # the large box is not confident
    assert largest([BIG, BIG], [0.7, 0.8], [2, 2], min_confidence=0.65) == 1  # equal area: confidence decides


def test_the_papers_rule_is_yolov5_max_det_1_then_the_thresholds():
    """YOLOv5 with max_det=1 keeps the highest-confidence car/truck box after NMS; the threshold and the size
    rule then judge that box alone, even when a larger confident box exists."""
    assert choose_box([BIG, SMALL], [0.7, 0.9], [2, 7], min_confidence=0.65) == 1  # not the largest
    assert choose_box([BIG, SMALL], [0.99, 0.9], [0, 2], min_confidence=0.65) == 1  # a person is not a vehicle
    assert choose_box([SMALL, BIG], [0.8, 0.8], [2, 2], min_confidence=0.65) == 0  # a tie: NMS order
    chosen = choose_box([BIG, SMALL], [0.7, 0.9], [2, 2], min_confidence=0.65)
    record = scored(confidence=0.9, box=[BIG, SMALL][chosen], size=1024)
    assert decide(record, Thresholds()) is None and largest([BIG, SMALL], [0.7, 0.9], [2, 2], min_confidence=0.65) == 0
    tiny = [0, 0, 240, 600]  # most confident but narrower than 250 px: the image is rejected, no fallback box
    chosen = choose_box([BIG, tiny], [0.7, 0.9], [2, 2], min_confidence=0.65)
    assert decide(scored(confidence=0.9, box=[BIG, tiny][chosen], size=1024), Thresholds()) == "too_small"
    assert largest([BIG, tiny], [0.7, 0.9], [2, 2], min_confidence=0.65) == 0


def test_choose_box_ignores_other_classes_and_handles_no_box():
    assert choose_box([BIG], [0.99], [0], min_confidence=0.65) is None  # a person is not a vehicle
    assert choose_box([BIG, SMALL], [0.99, 0.7], [5, 2], min_confidence=0.65) == 1  # a bus is not kept either
    assert choose_box([], [], [], min_confidence=0.65) is None


def test_below_threshold_the_most_confident_vehicle_is_kept_for_the_record():
    assert choose_box([BIG, SMALL], [0.3, 0.5], [2, 7], min_confidence=0.65) == 1


def test_confidence_threshold_is_inclusive():
    assert choose_box([BIG], [0.65], [2], min_confidence=0.65) == 0
    record = scored(confidence=0.65)
    assert decide(record, Thresholds()) is None
    assert decide(scored(confidence=0.6499), Thresholds()) == "low_confidence"


def scored(box=(0, 0, 600, 400), confidence=0.9, color="red", similarities=None, size=1024):
    return {
        "det_box": list(box),
        "det_confidence": confidence,
        "color": color,
        "width": size,
        "height": size,
        "color_similarities": similarities if similarities is not None else {"red": 0.3, "blue": 0.2},
    }


def test_size_rule_is_exclusive_at_250_px_and_scales_with_the_image():
    assert decide(scored(box=(0, 0, 250, 600)), Thresholds()) == "too_small"  # width exactly 250: dropped
    assert decide(scored(box=(0, 0, 600, 250)), Thresholds()) == "too_small"
    assert decide(scored(box=(0, 0, 251, 251)), Thresholds()) is None
    assert min_side_threshold(64, 64, min_box_side=250, reference_side=1024) == pytest.approx(15.625)
    assert min_side_threshold(2048, 1024, min_box_side=250, reference_side=1024) == 250
    assert decide(scored(box=(0, 0, 15.625, 40), size=64), Thresholds()) == "too_small"
    assert decide(scored(box=(0, 0, 16, 40), size=64), Thresholds()) is None


def test_reasons_in_order():
    assert decide({"unreadable_error": "OSError: truncated"}, Thresholds()) == "unreadable"
    assert decide({"det_confidence": None, "unreadable_error": None}, Thresholds()) == "no_vehicle"
    assert decide(scored(similarities={"red": 0.1, "blue": 0.2}), Thresholds()) == "wrong_color"
    assert decide(scored(similarities={"red": 0.1, "blue": 0.2}), Thresholds(color_check=False)) is None


def test_color_prediction_ties_and_unknown_colors():
    assert (
        predict_color({"red": 0.3, "blue": 0.3, "white": 0.1}, "blue") == "blue"
    )  # a tie with the prompt's color matches
    assert predict_color({"red": 0.3, "blue": 0.3, "white": 0.1}, "white") == "red"  # otherwise the first maximum
    assert predict_color({"red": 0.1, "blue": 0.3}) == "blue"
    assert decide(scored(similarities={"red": 0.3, "blue": 0.3}), Thresholds()) is None
    assert decide(scored(color="purple"), Thresholds()) == "wrong_color"  # a color outside the list never matches


def test_near_duplicates_compare_with_earlier_kept_images_only():
    embeddings = np.array([[1, 0], [1, 0.01], [0, 1], [1, 0.02], [0.0, 1.0]], dtype=np.float32)
    passes = [True, True, True, True, False]
    scores, duplicates = near_duplicates(embeddings, passes, threshold=0.99)
    assert scores[0] is None and scores[4] is None
    assert duplicates == [False, True, False, True, False]
    assert scores[2] == pytest.approx(0.0, abs=1e-6)
    # image 3 is compared with the kept images 0 and 2, not with the rejected image 1
    assert scores[3] == pytest.approx(float(embeddings[3] @ embeddings[0] / np.linalg.norm(embeddings[3])), abs=1e-6)
    assert near_duplicates(embeddings, passes, threshold=1.0)[1] == [False] * 5  # 1 = off
    assert near_duplicates(np.ones((2, 2)), [True, True], threshold=1.0)[1] == [
        False,
        False,
    ]  # even for identical images


def test_close_identity_pairs():
    means = np.array([[1, 0], [0.999, 0.04], [0, 1]], dtype=np.float32)
    pairs = close_identity_pairs(["a", "b", "c"], means, threshold=0.95)
    assert [(a, b) for a, b, _ in pairs] == [("a", "b")]


def test_crop_box_margin_square_and_clipping():
    assert crop_box([10, 20, 50, 40], 100, 100) == (10, 20, 50, 40)
    assert crop_box([10, 20, 50, 40], 100, 100, margin=0.5) == (0, 10, 70, 50)
    assert crop_box([10, 20, 50, 40], 100, 100, square=True) == (10, 10, 50, 50)
    assert crop_box([90, 90, 100, 100], 95, 95, margin=1.0) == (80, 80, 95, 95)


def test_the_papers_crop_is_yolov5_save_one_box():
    """save_one_box(gain=1.02, pad=10): width and height x 1.02 + 10 px about the center, truncated to integers,
    clipped to the image (worked by hand from its formula: x1 = cx - (w * 1.02 + 10) / 2, ...)."""
    assert crop_box([100.4, 200.7, 400.2, 500.9], 1024, 1024, margin=0.01, pad=5) == (92, 192, 408, 508)
    assert crop_box([0.5, 3, 300, 1020], 1024, 1024, margin=0.01, pad=5) == (0, 0, 307, 1024)
    assert crop_box([100.4, 200.7, 400.2, 500.9], 1024, 1024) == (100, 200, 400, 500)  # a tight crop truncates too


def test_the_paper_preset_runs_yolov5s_rule():
    from vehicle_diff.generation.filter import FilterConfig

    from vehicle_diff.config import parse_config

    config = parse_config(FilterConfig, "filter", ["--preset", "paper"])
    assert (config.box_rule, config.detection_iou, config.detection_confidence) == ("most_confident", 0.45, 0.65)
    assert (config.crop_margin, config.crop_pad, config.crop_square) == (0.01, 5, False)
    with pytest.raises(UserInputError, match="--box_rule"):
        FilterConfig(box_rule="biggest")
