"""Semantic scoring (paper §III-C): vehicle detection and the CLIP color check, scored once, decided purely.

Models turn images into numbers (boxes, confidences, similarities, embeddings); the functions at the top of
this module turn numbers + thresholds into decisions. The filter and the candidate selection share both.

"The most prominent vehicle" (§III-C restricts YOLOv5x6 to one box) has two readings, `box_rule`:
- `most_confident` (the paper's): YOLOv5 run with `max_det=1` keeps the highest-confidence car / truck box left
  after NMS (IoU 0.45, YOLOv5's default); the confidence threshold and the size rule then decide on that box.
- `largest`: among the car / truck boxes whose confidence reaches the threshold, the one with the largest area;
  equal areas go to the higher confidence. With no box at the threshold, the most confident vehicle box below it
  is kept for the record (and the image is rejected as `low_confidence`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vehicle_diff.models import load_yolo, torch_threads_kept

CAR, TRUCK = 2, 7  # COCO class ids
BOX_RULES = ("most_confident", "largest")
REJECT_REASONS = ("unreadable", "no_vehicle", "low_confidence", "too_small", "wrong_color", "near_duplicate")


def choose_box(
    boxes: list[list[float]],
    confidences: list[float],
    classes: list[int],
    *,
    min_confidence: float,
    rule: str = "most_confident",
    vehicle_classes=(CAR, TRUCK),
) -> int | None:
    """Index of the most prominent vehicle box under `rule` (see module doc), or None when there is no vehicle
    box. The boxes are what NMS left; on equal confidences the earlier box wins, as in NMS's order."""
    vehicles = [i for i, cls in enumerate(classes) if int(cls) in vehicle_classes]
    if not vehicles:
        return None
    if rule == "most_confident":
        return max(vehicles, key=lambda i: confidences[i])
    confident = [i for i in vehicles if confidences[i] >= min_confidence]
    if not confident:
        return max(vehicles, key=lambda i: confidences[i])
    area = lambda i: (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])  # noqa: E731
    return max(confident, key=lambda i: (area(i), confidences[i]))


def min_side_threshold(image_width: int, image_height: int, *, min_box_side: float, reference_side: float) -> float:
    """The paper drops boxes with a side <= 250 px on 1024x1024 images; at another size the rule scales with
    the image's shorter side (250 px at 1024 is 15.6 px at 64)."""
    return min_box_side * min(image_width, image_height) / reference_side


def predict_color(similarities: dict[str, float], expected: str | None = None) -> str:
    """argmax of Eq. 1's cosine similarities; a tie that includes the expected color is read as that color."""
    best = max(similarities.values())
    if expected in similarities and similarities[expected] == best:
        return expected
    return next(color for color, value in similarities.items() if value == best)


@dataclass(frozen=True)
class Thresholds:
    detection_confidence: float = 0.65  # §IV-A
    min_box_side: float = 250  # §III-C, at reference_side
    reference_side: float = 1024  # §IV-A output size
    color_check: bool = True
    near_duplicate: float = 1.0  # cosine of CLIP image embeddings; 1 = off


def decide(record: dict, thresholds: Thresholds) -> str | None:
    """The reject reason of one scored image (None = passes), from its stored scores alone. The near-duplicate
    rule needs the identity's other images and is applied afterwards by `near_duplicates`."""
    if record.get("unreadable_error"):
        return "unreadable"
    if record.get("det_confidence") is None:
        return "no_vehicle"
    if record["det_confidence"] < thresholds.detection_confidence:
        return "low_confidence"
    limit = min_side_threshold(
        record["width"],
        record["height"],
        min_box_side=thresholds.min_box_side,
        reference_side=thresholds.reference_side,
    )
    x1, y1, x2, y2 = record["det_box"]
    if min(x2 - x1, y2 - y1) <= limit:
        return "too_small"
    if thresholds.color_check:
        similarities = record.get("color_similarities") or {}
        if record["color"] not in similarities or predict_color(similarities, record["color"]) != record["color"]:
            return "wrong_color"
    return None


def near_duplicates(
    embeddings: np.ndarray, passes: list[bool], threshold: float
) -> tuple[list[float | None], list[bool]]:
    """Within one identity, in image order: the highest cosine similarity of each passing image to an earlier
    *kept* image, and whether it exceeds `threshold` (so it is rejected and not kept). 1 switches it off."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    normalized = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    kept: list[int] = []
    scores, duplicates = [], []
    for index, passing in enumerate(passes):
        if not passing:
            scores.append(None)
            duplicates.append(False)
            continue
        score = float(max(normalized[kept] @ normalized[index])) if kept else None
        duplicate = threshold < 1 and score is not None and score > threshold
        scores.append(score)
        duplicates.append(duplicate)
        if not duplicate:
            kept.append(index)
    return scores, duplicates


def close_identity_pairs(
    identities: list[str], mean_embeddings: np.ndarray, threshold: float
) -> list[tuple[str, str, float]]:
    """Pairs of different identities whose mean kept embeddings have cosine > threshold: likely label noise."""
    if len(identities) < 2:
        return []
    normalized = mean_embeddings / np.maximum(np.linalg.norm(mean_embeddings, axis=1, keepdims=True), 1e-12)
    similarity = normalized @ normalized.T
    rows, cols = np.nonzero(np.triu(similarity > threshold, k=1))
    pairs = [(identities[r], identities[c], float(similarity[r, c])) for r, c in zip(rows, cols, strict=True)]
    return sorted(pairs, key=lambda pair: -pair[2])


def crop_box(
    box: list[float],
    image_width: int,
    image_height: int,
    *,
    margin: float = 0.0,
    pad: float = 0.0,
    square: bool = False,
) -> tuple[int, int, int, int]:
    """Integer crop rectangle: the box grown on each side by `margin` (a fraction of its size) and `pad` pixels,
    optionally made square around its center, truncated to integers and clipped to the image. YOLOv5's
    `save_one_box` (gain 1.02, pad 10 on the whole width and height) is margin 0.01 and pad 5 here."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    x1, x2 = x1 - margin * width - pad, x2 + margin * width + pad
    y1, y2 = y1 - margin * height - pad, y2 + margin * height + pad
    if square:
        side = max(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        x1, x2, y1, y2 = cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2
    left, top = max(0, int(x1)), max(0, int(y1))
    right, bottom = min(image_width, int(x2)), min(image_height, int(y2))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def score_images(
    images: list,
    expected_colors: list[str],
    detector,
    clip,
    color_texts: np.ndarray,
    *,
    colors: list[str],
    detection_confidence: float,
    box_rule: str = "most_confident",
    crop_margin: float = 0.0,
    crop_pad: float = 0.0,
    crop_square: bool = False,
) -> tuple[list[dict], list, np.ndarray]:
    """Detect, crop and CLIP-score a batch, the one way the filter and the candidate selection share.

    `images` may hold None for an unreadable file. Returns, per image, its scores (detection box, class,
    confidence and count, crop size, the color similarities of Eq. 1 and the predicted color), its crop (None
    without a vehicle box) and the crop's CLIP embedding (zeros without a crop)."""
    readable = [i for i, image in enumerate(images) if image is not None]
    detections = dict(zip(readable, detector([images[i] for i in readable]), strict=True))
    scores, crops = [], []
    for index, image in enumerate(images):
        row = {
            "det_box": None,
            "det_class": None,
            "det_confidence": None,
            "det_num_vehicles": 0,
            "crop_width": None,
            "crop_height": None,
            "color_similarities": None,
            "predicted_color": None,
        }
        crop = None
        if image is not None:
            found = detections[index]
            row["det_num_vehicles"] = len(found["boxes"])
            chosen = choose_box(
                found["boxes"],
                found["confidences"],
                found["classes"],
                min_confidence=detection_confidence,
                rule=box_rule,
            )
            if chosen is not None:
                box = [round(v, 2) for v in found["boxes"][chosen]]
                crop = image.crop(
                    crop_box(box, image.width, image.height, margin=crop_margin, pad=crop_pad, square=crop_square)
                )
                row.update(
                    det_box=box,
                    det_class=found["classes"][chosen],
                    det_confidence=round(found["confidences"][chosen], 5),
                    crop_width=crop.width,
                    crop_height=crop.height,
                )
        scores.append(row)
        crops.append(crop)
    with_crop = [i for i, crop in enumerate(crops) if crop is not None]
    embeddings = np.zeros((len(images), color_texts.shape[1]), dtype=np.float32)
    if with_crop:
        embeddings[with_crop] = clip.encode_images([crops[i] for i in with_crop])
        for index, values in zip(with_crop, embeddings[with_crop] @ color_texts.T, strict=True):
            similarities = {color: round(float(v), 6) for color, v in zip(colors, values, strict=True)}
            scores[index]["color_similarities"] = similarities
            scores[index]["predicted_color"] = predict_color(similarities, expected_colors[index])
    return scores, crops, embeddings


def load_image(path: Path):
    """The RGB image, or None and the reason it cannot be read."""
    from vehicle_diff.io import open_rgb

    try:
        return open_rgb(path), None
    except (OSError, ValueError, SyntaxError) as error:  # missing, truncated, not an image, over the size limit
        return None, f"{type(error).__name__}: {error}"


class VehicleDetector:
    """ultralytics YOLO, batched; returns every car / truck box above a low scoring floor that survives NMS at
    IoU `iou` (YOLOv5's detect.py: 0.45; ultralytics' own default is 0.7)."""

    def __init__(
        self,
        model_id: str,
        *,
        imgsz: int,
        device,
        floor: float = 0.05,
        iou: float = 0.45,
        vehicle_classes=(CAR, TRUCK),
    ):
        self.model = load_yolo(model_id)
        self.imgsz, self.device, self.floor, self.iou = imgsz, device, floor, iou
        self.vehicle_classes = list(vehicle_classes)

    def __call__(self, images: list) -> list[dict]:
        if not images:
            return []
        with torch_threads_kept():
            results = self.model.predict(
                images,
                imgsz=self.imgsz,
                conf=self.floor,
                iou=self.iou,
                classes=self.vehicle_classes,
                device=self.device,
                verbose=False,
            )
        return [
            {
                "boxes": result.boxes.xyxy.cpu().tolist(),
                "confidences": result.boxes.conf.cpu().tolist(),
                "classes": [int(c) for c in result.boxes.cls.cpu().tolist()],
            }
            for result in results
        ]


class ClipScorer:
    """open_clip image embeddings and their cosine similarity to text prompts (paper Eq. 1)."""

    def __init__(self, model_id: str, *, device, dtype=None):
        import torch

        from vehicle_diff.models import load_open_clip

        self.model, self.preprocess, self.tokenizer = load_open_clip(model_id)
        self.model.to(device=device, dtype=dtype or torch.float32)
        self.device, self.dtype = device, dtype or torch.float32

    def encode_images(self, images: list) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, self.model.visual.output_dim), dtype=np.float32)
        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device, self.dtype)
        with torch.no_grad():
            features = self.model.encode_image(pixels)
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            features = self.model.encode_text(self.tokenizer(texts).to(self.device))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
