"""The toy world's report: what `run --preset toy` did, measured on the world's ground truth, which no stage reads.

- `color_precision`: of the generated images the filter kept, and of those it rejected for their color, the share
  whose vehicle shows the prompt's paint, by `toy_world.paint_color` (pixels, no model) in the detector's box;
- `detector`: recall and precision of the detector at the filter's confidence on unseen renders with known boxes
  (source scenes and the target cameras), a hit being IoU >= 0.5;
- `fd_to_target`: the Fréchet distance between generated images and the target's real training images, for the base
  model and for the LoRA (same prompts, same seeds), on a fixed feature: the 4x4 area-averaged RGB thumbnail of the
  whole image (48 numbers: what a camera's light, cast and framing change); `fd_to_target_unguided`: the same at
  guidance 1, the prompt's conditional prediction alone. Classifier-free guidance multiplies the LoRA's change to
  the conditional prediction and, at the toy's size, overshoots: at the generate stage's guidance the direction
  depends on the CPU that trained the zoo; without guidance it pointed to the target for every LoRA measured;
- `reid`: mAP and rank-1 on the target's query / gallery for re-ID trained on R, S, D and B with one budget; for
  `B-oracle`, B with a perfect generator (the world's own renders of as many new vehicles and images as S had, through
  the target cameras); B - R and B-oracle - R paired over the same queries; and the chance level (the mean mAP of
  random rankings of that query / gallery).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

REID_MODES = ("R", "S", "D", "B")
ORACLE_MODE = "B-oracle"
REPORTED_MODES = (*REID_MODES, ORACLE_MODE)
IOU_HIT = 0.5
FD_PROMPTS = 64  # generated with each model for the Fréchet distance
THUMBNAIL = 4


def reid_dirs(out: Path, mode: str) -> tuple[Path, Path]:
    """Where re-ID trained on `mode` and its evaluation are. S is the run's own `train-reid` and `evaluate` stages
    (`reid`, `evaluation`), which the toy preset trains on the kept synthetic set and evaluates on the world's query /
    gallery; the other modes are trained beside them in `toy-reid`."""
    if mode == "S":
        return out / "reid", out / "evaluation"
    return out / "toy-reid" / mode, out / "toy-reid" / f"{mode}-evaluation"


def box_iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detection_scores(predicted: list, truth: list, iou: float = IOU_HIT) -> dict:
    """One vehicle per image: `predicted[i]` is the kept box of image i or None. Recall = hits / images, precision
    = hits / boxes."""
    hits = sum(box is not None and box_iou(box, true) >= iou for box, true in zip(predicted, truth, strict=True))
    boxes = sum(box is not None for box in predicted)
    return {
        "recall": round(hits / max(len(truth), 1), 4),
        "precision": round(hits / boxes, 4) if boxes else None,
        "images": len(truth),
    }


def color_precision(rows: list[dict]) -> dict:
    """Rows with `color` (the prompt's), `oracle_color` (what the pixels show), `kept` and `reject_reason`: the share
    of right colors among the kept images and among those the color check rejected."""

    def share(group):
        return round(sum(r["oracle_color"] == r["color"] for r in group) / len(group), 4) if group else None

    kept = [r for r in rows if r["kept"]]
    rejected = [r for r in rows if r["reject_reason"] == "wrong_color"]
    return {
        "kept": share(kept),
        "rejected": share(rejected),
        "kept_images": len(kept),
        "rejected_images": len(rejected),
    }


def thumbnail_features(images: list) -> np.ndarray:
    """The fixed feature of `fd_to_target`: each image area-averaged to 4x4 RGB in [0, 1]."""
    from PIL import Image

    return np.stack(
        [
            np.asarray(image.convert("RGB").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX), np.float64).ravel()
            / 255
            for image in images
        ]
    )


def chance_map(query_pids, gallery_pids, query_cams, gallery_cams, draws: int = 20, seed: int = 0) -> float:
    """The mean mAP of random rankings (the metric's own rules: same-camera matches are junk)."""
    import torch

    from vehicle_diff.training.metrics import evaluate_rank

    generator = torch.Generator().manual_seed(seed)
    scores = [
        evaluate_rank(
            torch.rand(len(query_pids), len(gallery_pids), generator=generator),
            query_pids,
            gallery_pids,
            query_cams,
            gallery_cams,
        )["mAP"]
        for _ in range(draws)
    ]
    return float(np.mean(scores))


def paired_difference(first: np.ndarray, second: np.ndarray) -> dict:
    """Mean of `second - first` over the same queries and its standard error: how far apart two models are on one
    query set, against the spread the queries themselves give."""
    difference = np.asarray(second, np.float64) - np.asarray(first, np.float64)
    stderr = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else float("nan")
    return {"mean": round(float(difference.mean()), 4), "stderr": round(float(stderr), 4), "queries": len(difference)}


def per_query_ap(model_dir: Path, split) -> np.ndarray:
    """The average precision of every query of `split` (query / gallery) that has a match in another camera."""
    import torch

    from vehicle_diff.training.evaluate import extract_features
    from vehicle_diff.training.metrics import evaluate_rank, pairwise_distance
    from vehicle_diff.training.reid_model import ReIDModel

    model = ReIDModel.from_pretrained(str(model_dir))
    query, gallery = (extract_features(model, part, progress=False) for part in (split.query, split.gallery))
    distance = pairwise_distance(query, gallery)
    gallery_ids = torch.tensor([s.pid for s in split.gallery])
    gallery_cams = torch.tensor([s.camid for s in split.gallery])
    scores = []
    for row, sample in enumerate(split.query):
        try:
            result = evaluate_rank(distance[row : row + 1], [sample.pid], gallery_ids, [sample.camid], gallery_cams)
        except ValueError:  # no match outside its own camera: not a valid query, as in the mean
            continue
        scores.append(result["mAP"])
    return np.array(scores)


# -- measuring a finished run --------------------------------------------------------------------------------------


def filter_rows_with_oracle(filtered: Path, generated: Path) -> list[dict]:
    import pyarrow.parquet as pq
    from PIL import Image

    from .toy_world import paint_color

    columns = ["file_name", "color", "det_box", "kept", "reject_reason"]
    rows = pq.read_table(filtered / "records.parquet", columns=columns).to_pylist()
    scored = []
    for row in rows:
        if row["det_box"] is None:
            continue
        with Image.open(generated / row["file_name"]) as image:
            box = tuple(int(round(v)) for v in row["det_box"])
            scored.append({**row, "oracle_color": paint_color(image, box)})
    return scored


def held_out_renders(count: int, seed: int, size: int) -> dict:
    """Unseen source scenes, and the same vehicles seen by the target cameras (framed as the source), with boxes."""
    from .toy_world import TARGET_CAMERAS, render, source_scene, vehicle_look

    source = [source_scene(index, seed=seed, size=(size, size)) for index in range(count)]
    target = [
        render(
            vehicle_look(**scene.identity), TARGET_CAMERAS[index % len(TARGET_CAMERAS)], size=(size, size), seed=index
        )
        for index, scene in enumerate(source)
    ]
    return {"source": [scene.render for scene in source], "target_cameras": target}


def measure_detector(filter_config, count: int = 200, seed: int = 12345) -> dict:
    from vehicle_diff.generation.scoring import VehicleDetector, choose_box

    detector = VehicleDetector(
        filter_config.detector, imgsz=filter_config.detector_imgsz, device="cpu", iou=filter_config.detection_iou
    )
    scores = {}
    for world, renders in held_out_renders(count, seed, filter_config.detector_imgsz).items():
        kept = []
        for found in detector([r.image for r in renders]):
            index = choose_box(
                found["boxes"],
                found["confidences"],
                found["classes"],
                min_confidence=filter_config.detection_confidence,
                rule=filter_config.box_rule,
            )
            confident = index is not None and found["confidences"][index] >= filter_config.detection_confidence
            kept.append(found["boxes"][index] if confident else None)
        scores[world] = detection_scores(kept, [r.box for r in renders])
    return scores


def render_with_and_without_lora(generate_config, lora: Path, prompts: list[str], guidance_scales) -> dict:
    """The same prompts and seeds through the base model and through base + LoRA, at the generate stage's settings
    but each of `guidance_scales`; per guidance scale, {"base": images, "lora": images}."""
    from vehicle_diff.generation.generate import attach_lora, load_pipeline, render

    pipe = load_pipeline(
        generate_config.pretrained_model_name_or_path, revision=None, mixed_precision="no", device="cpu"
    )
    settings = {
        "num_inference_steps": generate_config.num_inference_steps,
        "height": generate_config.height,
        "width": generate_config.width,
    }
    images = {scale: {} for scale in guidance_scales}
    for name in ("base", "lora"):
        if name == "lora":
            attach_lora(pipe, lora, generate_config.pretrained_model_name_or_path)
        for scale in images:
            images[scale][name] = []
            for start in range(0, len(prompts), generate_config.batch_size):
                chunk = prompts[start : start + generate_config.batch_size]
                seeds = list(range(start, start + len(chunk)))
                images[scale][name] += render(pipe, chunk, seeds, guidance_scale=scale, **settings)
    return images


def reid_scores(out: Path, world: Path) -> dict:
    from vehicle_diff.training.reid_data import read_veri776

    scores = {}
    for mode in REPORTED_MODES:
        metrics = json.loads((reid_dirs(out, mode)[1] / "metrics.json").read_text())["plain"]
        scores[mode] = {"mAP": round(metrics["mAP"], 4), "rank1": round(metrics["rank1"], 4)}
    split = read_veri776(str(world))
    real = per_query_ap(reid_dirs(out, "R")[0], split)
    scores["B_minus_R"] = paired_difference(real, per_query_ap(reid_dirs(out, "B")[0], split))
    scores["B_oracle_minus_R"] = paired_difference(real, per_query_ap(reid_dirs(out, ORACLE_MODE)[0], split))
    scores["chance_mAP"] = round(
        chance_map(
            [s.pid for s in split.query],
            [s.pid for s in split.gallery],
            [s.camid for s in split.query],
            [s.camid for s in split.gallery],
        ),
        4,
    )
    return scores


def write_report(out: Path, configs: dict, world: Path) -> dict:
    """Measure the finished run in `out` on the world's ground truth: toy_report.json, toy_report.md and a sheet of
    base / LoRA / real target images (toy_report_images.png)."""
    import pyarrow.parquet as pq
    from PIL import Image

    from .contact_sheet import contact_sheet
    from .io import atomic_path
    from .stats import frechet_distance_of_features

    rows = filter_rows_with_oracle(out / "filtered", out / "generated")
    prompts = pq.read_table(out / "prompts" / "prompts.parquet", columns=["prompt"]).column("prompt").to_pylist()
    prompts = (prompts * FD_PROMPTS)[:FD_PROMPTS]
    guidance = configs["generate"].guidance_scale
    fd_guidance = {"fd_to_target": guidance, "fd_to_target_unguided": 1.0}
    by_guidance = render_with_and_without_lora(
        configs["generate"], out / "lora" / "pytorch_lora_weights.safetensors", prompts, fd_guidance.values()
    )
    generated = by_guidance[guidance]
    real_files = sorted((world / "image_train").glob("*.jpg"))
    real = [Image.open(path).convert("RGB") for path in real_files]
    real_features = thumbnail_features(real)
    report = {
        "color_precision": color_precision(rows),
        "detector": measure_detector(configs["filter"]),
        **{
            key: {
                name: round(frechet_distance_of_features(thumbnail_features(images), real_features), 4)
                for name, images in by_guidance[scale].items()
            }
            for key, scale in fd_guidance.items()
        },
        "fd_feature": "4x4 area-averaged RGB thumbnail of the whole image (48-d), "
        f"{FD_PROMPTS} generated images per model vs {len(real)} real target training images; "
        f"fd_to_target at the generate stage's guidance {guidance}, fd_to_target_unguided at 1",
        "reid": reid_scores(out, world),
    }
    with atomic_path(out / "toy_report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    sheet = contact_sheet(
        generated["base"][:8] + generated["lora"][:8] + real[:: max(1, len(real) // 8)][:8],
        ["base"] * 8 + ["LoRA"] * 8 + ["real target"] * 8,
        title="toy world: the same prompts and seeds, base vs LoRA; real target-camera images below",
        columns=8,
        cell=96,
    )
    with atomic_path(out / "toy_report_images.png") as tmp:
        sheet.save(tmp, format="PNG")
    with atomic_path(out / "toy_report.md") as tmp:
        tmp.write_text(report_markdown(report))
    return report


def report_markdown(report: dict) -> str:
    color, fd, reid = report["color_precision"], report["fd_to_target"], report["reid"]
    unguided = report["fd_to_target_unguided"]
    lines = [
        "## The toy world, measured on its ground truth",
        "",
        f"- color check: {color['kept']} of the kept images ({color['kept_images']}) show the prompt's paint, "
        f"{color['rejected']} of those it rejected for their color ({color['rejected_images']}) (pixel oracle)",
        "- detector (recall / precision at the filter's confidence, IoU >= 0.5): "
        + "; ".join(f"{world} {s['recall']} / {s['precision']}" for world, s in report["detector"].items()),
        f"- Fréchet distance to the target's real images ({report['fd_feature']}): base {fd['base']}, LoRA {fd['lora']}; "
        f"unguided: base {unguided['base']}, LoRA {unguided['lora']}",
        "",
        "| re-ID trained on | mAP | rank-1 |",
        "|---|---|---|",
        *(f"| {mode} | {reid[mode]['mAP']:.4f} | {reid[mode]['rank1']:.4f} |" for mode in REPORTED_MODES),
        f"| chance | {reid['chance_mAP']:.4f} | |",
        "",
        f"{ORACLE_MODE}: B with the world's own renders in place of the generated images (a perfect generator).",
        "",
        *(
            f"{name} - R, mAP over the same queries: {reid[key]['mean']:+.4f} "
            f"(standard error {reid[key]['stderr']:.4f}, {reid[key]['queries']} queries)"
            for name, key in (("B", "B_minus_R"), (ORACLE_MODE, "B_oracle_minus_R"))
        ),
    ]
    return "\n".join(lines) + "\n"
