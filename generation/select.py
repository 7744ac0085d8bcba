"""Stage 3a: pick the fine-tuned model (and prompt template) by measurement (paper §III-C).

The paper chose among its fine-tuned candidates by looking at the images of ~10 prompts. Here every candidate
(a LoRA, or `base` = the vanilla model, the control) x template renders the same prompts with the same seeds,
and is scored with the filter stage's scorers:

- yield: the fraction of images the filter would keep (its rules and thresholds, without near-duplicates),
- detection pass rate and CLIP color accuracy separately,
- CLIP text-image similarity to the prompt,
- Fréchet distance of CLIP image features to the ~1% real target images (`--real_images`; labelled FD-CLIP:
  Inception weights are not assumed to be available, and with a few dozen images it is a coarse signal).

Rule: among the candidates whose yield is at least `--yield_tolerance` x the best yield, the one closest to the
real images (lowest FD-CLIP); without real images, or on ties, the higher yield, then the higher text similarity.
Rendering and scoring settings come from the preset's `generate` and `filter` sections.

    vehicle-diff select --prompts out/prompts --candidates base out/lora-a out/lora-b --real_images out/captions
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vehicle_diff.config import parse_config, save_config
from vehicle_diff.errors import UserInputError
from vehicle_diff.io import atomic_path

from .filter import FilterConfig, load_image
from .generate import GenerateConfig, attach_lora, image_seed, load_pipeline, lora_file, read_prompt_library, render
from .prompts import TEMPLATES, build_prompt
from .scoring import ClipScorer, VehicleDetector, choose_box, crop_box, decide, predict_color

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def sample_prompt_rows(num_rows: int, num_prompts: int, seed: int) -> list[int]:
    """The library rows every candidate renders: a seeded sample, in library order."""
    return sorted(random.Random(seed).sample(range(num_rows), min(num_prompts, num_rows)))


def rank_candidates(results: list[dict], yield_tolerance: float) -> list[dict]:
    """Sort candidates by the documented rule (module doc); the first is chosen."""
    best_yield = max(result["yield"] for result in results)
    eligible = lambda r: r["yield"] >= yield_tolerance * best_yield  # noqa: E731
    distance = lambda r: r["fd_clip"] if r.get("fd_clip") is not None else 0.0  # noqa: E731
    return sorted(results, key=lambda r: (not eligible(r), distance(r), -r["yield"], -r["clip_text_similarity"]))


def candidate_name(candidate: str, template_id: str, several_templates: bool) -> str:
    name = "base" if candidate == "base" else Path(candidate).name.removesuffix(".safetensors")
    return f"{name}|{template_id}" if several_templates else name


def real_image_files(folder: str) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise UserInputError(f"--real_images {folder}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise UserInputError(
            f"--real_images {folder}: need at least 2 images for a Fréchet distance, found {len(files)}"
        )
    return files


def score_images(images: list, requests: list[dict], detector, clip, color_texts: np.ndarray,
                 filter_config: FilterConfig) -> list[dict]:  # fmt: skip
    """The filter's scores for freshly rendered images, plus the CLIP similarity to the prompt."""
    thresholds = replace(filter_config.thresholds, near_duplicate=1.0)  # a few images per prompt: no duplicates rule
    detections = detector(images)
    full_embeddings = clip.encode_images(images)
    prompt_embeddings = clip.encode_texts([request["prompt"] for request in requests])
    records, crops = [], []
    for image, request, found in zip(images, requests, detections, strict=True):
        chosen = choose_box(
            found["boxes"], found["confidences"], found["classes"], min_confidence=filter_config.detection_confidence
        )
        record = {"color": request["color"], "width": image.width, "height": image.height, "det_confidence": None}
        crop = image
        if chosen is not None:
            box = found["boxes"][chosen]
            record.update(det_box=box, det_confidence=found["confidences"][chosen])
            crop = image.crop(crop_box(box, image.width, image.height))
        records.append(record)
        crops.append(crop)
    color_similarities = clip.encode_images(crops) @ color_texts.T
    scores = []
    for record, request, similarities, embedding, text in zip(
        records, requests, color_similarities, full_embeddings, prompt_embeddings, strict=True
    ):
        record["color_similarities"] = dict(zip(filter_config.colors, similarities.tolist(), strict=True))
        reason = decide(record, thresholds)
        scores.append({
            "detected": reason not in ("no_vehicle", "low_confidence", "too_small"),
            "color_correct": predict_color(record["color_similarities"], request["color"]) == request["color"],
            "kept": reason is None,
            "reject_reason": reason,
            "clip_text_similarity": float(embedding @ text),
            "embedding": embedding,
        })  # fmt: skip
    return scores


def ranking_markdown(ranking: list[dict], images_per_candidate: int) -> str:
    lines = ["# Candidate ranking", "", f"{images_per_candidate} images per candidate, same prompts and seeds.", "",
             "| rank | candidate | template | yield | detection | color acc. | CLIP text sim. | FD-CLIP to real |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for rank, r in enumerate(ranking, start=1):
        distance = "-" if r["fd_clip"] is None else f"{r['fd_clip']:.4f}"
        lines.append(f"| {rank} | {r['candidate']} | {r['template_id']} | {r['yield']:.3f} | {r['detection_pass_rate']:.3f} | "
                     f"{r['color_accuracy']:.3f} | {r['clip_text_similarity']:.4f} | {distance} |")  # fmt: skip
    lines += ["", f"Chosen: **{ranking[0]['candidate']}**."]
    return "\n".join(lines) + "\n"


@dataclass
class SelectConfig:
    """Rank LoRA candidates (and prompt templates) on the same prompts and seeds; choose one by a fixed rule."""

    output_dir: str = field(
        default="vehicle-diff-output/select", metadata={"help": "ranking, contact sheets, selected.json"}
    )
    preset: str = field(
        default="paper", metadata={"help": "paper, tiny, or a YAML file (its generate/filter sections)"}
    )
    prompts: str = field(default="vehicle-diff-output/prompts", metadata={"help": "prompt library folder or Parquet"})
    candidates: list[str] = field(
        default_factory=lambda: ["base"], metadata={"help": "LoRA files/folders; base = none"}
    )
    template_ids: list[str] = field(default_factory=lambda: ["paper"], metadata={"help": f"of {sorted(TEMPLATES)}"})
    real_images: str | None = field(default=None, metadata={"help": "folder of the ~1%% real target images"})
    num_prompts: int = 10
    seeds_per_prompt: int = 2
    seed: int = 0
    yield_tolerance: float = field(default=0.9, metadata={"help": "eligible: yield >= this x the best yield"})

    def __post_init__(self):
        if self.num_prompts <= 0 or self.seeds_per_prompt <= 0:
            raise UserInputError("--num_prompts and --seeds_per_prompt must be positive")
        if not 0 <= self.yield_tolerance <= 1:
            raise UserInputError(f"--yield_tolerance must be in [0, 1] (got {self.yield_tolerance})")
        unknown = [t for t in self.template_ids if t not in TEMPLATES]
        if unknown or not self.template_ids:
            raise UserInputError(f"--template_ids {unknown}: unknown; use some of {sorted(TEMPLATES)}")
        if not self.candidates:
            raise UserInputError("--candidates: give at least one (base, or a LoRA file / folder)")


def main(argv: list[str] | None = None) -> Path:
    config = parse_config(SelectConfig, "select", argv)
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from training.fid import frechet_distance_of_features
    from vehicle_diff.contact_sheet import contact_sheet

    render_config = parse_config(GenerateConfig, "generate", ["--preset", config.preset])
    filter_config = parse_config(FilterConfig, "filter", ["--preset", config.preset])
    loras = {c: None if c == "base" else lora_file(c) for c in config.candidates}
    library = read_prompt_library(config.prompts)
    real_files = real_image_files(config.real_images) if config.real_images else []
    device = PartialState(cpu=not torch.cuda.is_available()).device
    out_dir = Path(config.output_dir)

    requests = []
    for row in sample_prompt_rows(len(library["identity"]), config.num_prompts, config.seed):
        for sample in range(config.seeds_per_prompt):
            attributes = {name: library[name][row] for name in ("color", "year", "brand", "model", "body_style")}
            requests.append({**attributes, "identity": library["identity"][row],
                             "seed": image_seed(config.seed, f"select/{library['identity'][row]}/{sample}")})  # fmt: skip

    pipe = load_pipeline(render_config.pretrained_model_name_or_path, revision=render_config.revision,
                         mixed_precision=render_config.mixed_precision, device=device)  # fmt: skip
    detector = VehicleDetector(filter_config.detector, imgsz=filter_config.detector_imgsz, device=device,
                               floor=filter_config.detection_floor)  # fmt: skip
    clip = ClipScorer(filter_config.clip_model, device=device)
    color_texts = clip.encode_texts([filter_config.color_prompt.format(color=c) for c in filter_config.colors])
    real_images = [image for image, _ in map(load_image, real_files) if image is not None]
    real_features = clip.encode_images(real_images) if real_files else None
    settings = {
        name: getattr(render_config, name)
        for name in ("num_inference_steps", "guidance_scale", "height", "width", "negative_prompt")
    }

    results, names = [], set()
    progress = tqdm(total=len(loras) * len(config.template_ids) * len(requests), desc="select", unit="img")
    for candidate, lora in loras.items():
        if lora is not None:
            attach_lora(pipe, lora, render_config.pretrained_model_name_or_path)
        for template_id in config.template_ids:
            name = candidate_name(candidate, template_id, len(config.template_ids) > 1)
            name = name if name not in names else f"{name}-{len(names)}"
            names.add(name)
            prompted = [{**r, "prompt": build_prompt(TEMPLATES[template_id], **{k: r[k] for k in ("color", "year", "brand", "model", "body_style")})}
                        for r in requests]  # fmt: skip
            images = []
            for start in range(0, len(prompted), render_config.batch_size):
                batch = prompted[start : start + render_config.batch_size]
                images += render(pipe, [r["prompt"] for r in batch], [r["seed"] for r in batch],
                                 lora_scale=render_config.lora_scale if lora else None, **settings)  # fmt: skip
                progress.update(len(batch))
            scores = score_images(images, prompted, detector, clip, color_texts, filter_config)
            embeddings = np.stack([s["embedding"] for s in scores])
            result = {
                "candidate": name,
                "lora_weights": str(lora) if lora else None,
                "template_id": template_id,
                "images": len(images),
                "yield": float(np.mean([s["kept"] for s in scores])),
                "detection_pass_rate": float(np.mean([s["detected"] for s in scores])),
                "color_accuracy": float(np.mean([s["color_correct"] for s in scores])),
                "clip_text_similarity": float(np.mean([s["clip_text_similarity"] for s in scores])),
                "fd_clip": frechet_distance_of_features(embeddings, real_features)
                if real_features is not None
                else None,
            }
            results.append(result)
            sheet = out_dir / "contact_sheets" / f"{name.replace('|', '_')}.png"
            labels = [
                f"{r['color']} {'kept' if s['kept'] else s['reject_reason']}"
                for r, s in zip(prompted, scores, strict=True)
            ]
            with atomic_path(sheet) as tmp:
                contact_sheet(
                    images, labels, title=f"{name}: yield {result['yield']:.2f}", columns=config.seeds_per_prompt * 5
                ).save(tmp, format="PNG")
        if lora is not None:
            pipe.unload_lora_weights()
    progress.close()

    ranking = rank_candidates(results, config.yield_tolerance)
    chosen = ranking[0]
    with atomic_path(out_dir / "ranking.json") as tmp:
        tmp.write_text(json.dumps({"rule": __doc__.split("Rule: ")[1].split("\n\n")[0].replace("\n", " "),
                                   "ranking": ranking, "real_images": len(real_files)}, indent=2))  # fmt: skip
    with atomic_path(out_dir / "ranking.md") as tmp:
        tmp.write_text(ranking_markdown(ranking, len(requests)))
    with atomic_path(out_dir / "selected.json") as tmp:
        tmp.write_text(json.dumps({k: chosen[k] for k in ("candidate", "lora_weights", "template_id")}, indent=2))
    save_config(config, out_dir / "config.yaml", stage="select")
    print(f"chosen: {chosen['candidate']} (yield {chosen['yield']:.2f}); ranking: {out_dir / 'ranking.md'}")
    return out_dir


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
