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
Rendering and scoring use the very `generate` and `filter` settings those stages run with (`vehicle-diff run`
passes its resolved configs; standalone, the preset's sections), the filter's own detect-crop-score function,
and FD-CLIP compares detector crops with detector crops of the real images. `generate` (and `run`) then use the
chosen LoRA and template.

    vehicle-diff select --prompts out/prompts --candidates base out/lora-a out/lora-b --real_images out/captions
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vehicle_diff.config import check_ranges, parse_config, save_config
from vehicle_diff.errors import UserInputError
from vehicle_diff.io import atomic_path, list_images, sha256_file
from vehicle_diff.jobs import Job
from vehicle_diff.stats import frechet_distance_of_features

from .filter import FilterConfig
from .generate import (
    ATTRIBUTES,
    GenerateConfig,
    attach_lora,
    image_seed,
    load_pipeline,
    lora_file,
    prompt_library_file,
    read_prompt_library,
    render,
)
from .prompts import TEMPLATES, build_prompt
from .scoring import ClipScorer, VehicleDetector, decide, load_image, score_images

RENDER_SETTINGS = (
    "num_inference_steps",
    "guidance_scale",
    "height",
    "width",
    "negative_prompt",
    "batch_size",
    "pretrained_model_name_or_path",
    "revision",
    "mixed_precision",
    "lora_scale",
)
RENDER_KWARGS = ("num_inference_steps", "guidance_scale", "height", "width", "negative_prompt")
SELECT_FILTER_SETTINGS = (
    "detector",
    "detector_imgsz",
    "detection_floor",
    "detection_iou",
    "box_rule",
    "detection_confidence",
    "min_box_side",
    "reference_side",
    "crop_margin",
    "crop_pad",
    "crop_square",
    "clip_model",
    "colors",
    "color_prompt",
    "color_check",
)


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
    files = list_images(folder, flag="--real_images")
    if len(files) < 2:
        raise UserInputError(
            f"--real_images {folder}: need at least 2 images for a Fréchet distance, found {len(files)}"
        )
    return files


def candidate_scores(
    images: list, requests: list[dict], detector, clip, color_texts: np.ndarray, filter_config: FilterConfig
) -> list[dict]:
    """The filter's scores and decision for freshly rendered images, the CLIP similarity to the prompt, and the
    crop's embedding (None without a vehicle box)."""
    thresholds = replace(filter_config.thresholds, near_duplicate=1.0)  # a few images per prompt: no duplicates rule
    colors = [request["color"] for request in requests]
    scores, crops, embeddings = score_images(
        images,
        colors,
        detector,
        clip,
        color_texts,
        **filter_config.crop_settings,
    )
    image_embeddings = clip.encode_images(images)
    prompt_embeddings = clip.encode_texts([request["prompt"] for request in requests])
    results = []
    for image, request, score, crop, embedding, image_embedding, text in zip(
        images, requests, scores, crops, embeddings, image_embeddings, prompt_embeddings, strict=True
    ):
        reason = decide({**score, "color": request["color"], "width": image.width, "height": image.height}, thresholds)
        results.append(
            {
                "detected": reason not in ("no_vehicle", "low_confidence", "too_small"),
                "color_correct": score["predicted_color"] == request["color"],
                "kept": reason is None,
                "reject_reason": reason,
                "clip_text_similarity": float(image_embedding @ text),
                "embedding": embedding if crop is not None else None,
            }
        )
    return results


def real_crop_features(files: list[Path], detector, clip, color_texts: np.ndarray, filter_config: FilterConfig):
    """CLIP embeddings of the real images' detector crops, cut as the filter cuts them."""
    images = [image for image, _ in map(load_image, files) if image is not None]
    _, crops, embeddings = score_images(
        images,
        [None] * len(images),
        detector,
        clip,
        color_texts,
        **filter_config.crop_settings,
    )
    with_crops = [i for i, crop in enumerate(crops) if crop is not None]
    if len(with_crops) < 2:
        raise UserInputError(
            f"--real_images: the detector found a vehicle in {len(with_crops)} of {len(images)} real "
            "images; FD-CLIP needs at least 2"
        )
    return embeddings[with_crops]


def ranking_markdown(ranking: list[dict], images_per_candidate: int) -> str:
    lines = [
        "# Candidate ranking",
        "",
        f"{images_per_candidate} images per candidate, same prompts and seeds.",
        "",
        "| rank | candidate | template | yield | detection | color acc. | CLIP text sim. | FD-CLIP to real |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rank, r in enumerate(ranking, start=1):
        distance = "-" if r["fd_clip"] is None else f"{r['fd_clip']:.4f}"
        lines.append(
            f"| {rank} | {r['candidate']} | {r['template_id']} | {r['yield']:.3f} | {r['detection_pass_rate']:.3f} | "
            f"{r['color_accuracy']:.3f} | {r['clip_text_similarity']:.4f} | {distance} |"
        )
    lines += ["", f"Chosen: **{ranking[0]['candidate']}**."]
    return "\n".join(lines) + "\n"


@dataclass
class SelectConfig:
    """Rank LoRA candidates (and prompt templates) on the same prompts and seeds; choose one by a fixed rule."""

    output_dir: str = field(
        default="vehicle-diff-output/select", metadata={"help": "ranking, contact sheets, selected.json"}
    )
    preset: str = field(
        default="paper", metadata={"help": "paper, toy, tiny, or a YAML file (its generate/filter sections)"}
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
    overwrite: bool = field(default=False, metadata={"help": "replace this stage's earlier outputs in --output_dir"})
    dry_run: bool = field(
        default=False, metadata={"help": "print and write plan.json; load no model (candidates may not exist yet)"}
    )

    def __post_init__(self):
        check_ranges(self, non_negative=("seed",))
        if self.num_prompts <= 0 or self.seeds_per_prompt <= 0:
            raise UserInputError("--num_prompts and --seeds_per_prompt must be positive")
        if not 0 <= self.yield_tolerance <= 1:
            raise UserInputError(f"--yield_tolerance must be in [0, 1] (got {self.yield_tolerance})")
        unknown = [t for t in self.template_ids if t not in TEMPLATES]
        if unknown or not self.template_ids:
            raise UserInputError(f"--template_ids {unknown}: unknown; use some of {sorted(TEMPLATES)}")
        if not self.candidates:
            raise UserInputError("--candidates: give at least one (base, or a LoRA file / folder)")


def job_for(
    config: SelectConfig,
    generate_config: GenerateConfig,
    filter_config: FilterConfig,
    loras: dict,
    real_files: list[Path],
) -> Job:
    from vehicle_diff.jobs import files_digest, output_settings

    render = {name: getattr(generate_config, name) for name in RENDER_SETTINGS}
    scoring = {name: getattr(filter_config, name) for name in SELECT_FILTER_SETTINGS}
    components = {
        "settings": output_settings(config, ignore=("prompts", "candidates", "real_images")),
        "render": render,
        "scoring": scoring,
        "prompt_library_sha256": sha256_file(prompt_library_file(config.prompts)),
        # by content, in order: a moved or copied run folder holds the same candidates
        "candidates": [sha256_file(lora) if lora else "base" for lora in loras.values()],
        "real_images": files_digest(Path(config.real_images), real_files) if real_files else None,
    }
    return Job(
        config.output_dir,
        "select",
        components,
        overwrite=config.overwrite,
        inputs=[config.prompts],
        owned=["ranking.json", "ranking.md", "selected.json", "contact_sheets/*.png", "config.yaml"],
    )


def select_candidates(config: SelectConfig, *, generate_config: GenerateConfig, filter_config: FilterConfig) -> Path:
    """Render, score and rank every candidate x template with the very settings `generate` and `filter` use."""
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from vehicle_diff.contact_sheet import contact_sheet

    library = read_prompt_library(config.prompts)
    if config.dry_run:
        return dry_run(config, generate_config, library)
    loras = {c: None if c == "base" else lora_file(c, "--candidates") for c in config.candidates}
    real_files = real_image_files(config.real_images) if config.real_images else []
    job = job_for(config, generate_config, filter_config, loras, real_files).open()
    out_dir = job.out_dir
    device = PartialState(cpu=not torch.cuda.is_available()).device

    requests = []
    for row in sample_prompt_rows(len(library["identity"]), config.num_prompts, config.seed):
        for sample in range(config.seeds_per_prompt):
            attributes = {name: library[name][row] for name in ATTRIBUTES}
            requests.append(
                {
                    **attributes,
                    "identity": library["identity"][row],
                    "seed": image_seed(config.seed, f"select/{library['identity'][row]}/{sample}"),
                }
            )

    pipe = load_pipeline(
        generate_config.pretrained_model_name_or_path,
        revision=generate_config.revision,
        mixed_precision=generate_config.mixed_precision,
        device=device,
    )
    detector = VehicleDetector(
        filter_config.detector,
        imgsz=filter_config.detector_imgsz,
        device=device,
        floor=filter_config.detection_floor,
        iou=filter_config.detection_iou,
    )
    clip = ClipScorer(filter_config.clip_model, device=device)
    color_texts = clip.encode_texts([filter_config.color_prompt.format(color=c) for c in filter_config.colors])
    real_features = None
    if real_files:
        real_features = real_crop_features(real_files, detector, clip, color_texts, filter_config)
    settings = {name: getattr(generate_config, name) for name in RENDER_KWARGS}

    results, names = [], set()
    progress = tqdm(total=len(loras) * len(config.template_ids) * len(requests), desc="select", unit="img")
    for candidate, lora in loras.items():
        if lora is not None:
            attach_lora(pipe, lora, generate_config.pretrained_model_name_or_path)
        for template_id in config.template_ids:
            name = candidate_name(candidate, template_id, len(config.template_ids) > 1)
            name = name if name not in names else f"{name}-{len(names)}"
            names.add(name)
            prompted = [
                {**r, "prompt": build_prompt(TEMPLATES[template_id], **{k: r[k] for k in ATTRIBUTES})} for r in requests
            ]
            images = []
            for start in range(0, len(prompted), generate_config.batch_size):
                batch = prompted[start : start + generate_config.batch_size]
                images += render(
                    pipe,
                    [r["prompt"] for r in batch],
                    [r["seed"] for r in batch],
                    lora_scale=generate_config.lora_scale if lora else None,
                    **settings,
                )
                progress.update(len(batch))
            scores = candidate_scores(images, prompted, detector, clip, color_texts, filter_config)
            crop_embeddings = np.stack(
                [s["embedding"] for s in scores if s["embedding"] is not None] or [np.zeros(color_texts.shape[1])]
            )
            with_crops = sum(s["embedding"] is not None for s in scores)
            result = {
                "candidate": name,
                "lora_weights": str(lora) if lora else None,
                "lora_sha256": sha256_file(lora) if lora else None,
                "template_id": template_id,
                "images": len(images),
                "yield": float(np.mean([s["kept"] for s in scores])),
                "detection_pass_rate": float(np.mean([s["detected"] for s in scores])),
                "color_accuracy": float(np.mean([s["color_correct"] for s in scores])),
                "clip_text_similarity": float(np.mean([s["clip_text_similarity"] for s in scores])),
                "fd_clip": frechet_distance_of_features(crop_embeddings, real_features)
                if real_features is not None and with_crops >= 2
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
        tmp.write_text(
            json.dumps(
                {
                    "rule": __doc__.split("Rule: ")[1].split("\n\n")[0].replace("\n", " "),
                    "ranking": ranking,
                    "real_images": len(real_files),
                },
                indent=2,
            )
        )
    with atomic_path(out_dir / "ranking.md") as tmp:
        tmp.write_text(ranking_markdown(ranking, len(requests)))
    with atomic_path(out_dir / "selected.json") as tmp:
        chosen_keys = ("candidate", "lora_weights", "lora_sha256", "template_id")
        tmp.write_text(json.dumps({k: chosen[k] for k in chosen_keys}, indent=2))
    save_config(config, out_dir / "config.yaml", stage="select")
    job.mark_done({k: chosen[k] for k in ("candidate", "template_id")})
    print(
        f"Chosen: {chosen['candidate']} with template {chosen['template_id']} (yield {chosen['yield']:.2f}). "
        f"Ranking: {out_dir / 'ranking.md'}"
    )
    return out_dir


def dry_run(config: SelectConfig, generate_config: GenerateConfig, library: dict) -> Path:
    """The plan from the prompt library alone, so it can be made before any candidate LoRA is trained: the
    images each candidate x template renders and the denoising steps in all."""
    from vehicle_diff.jobs import write_plan

    prompts = min(config.num_prompts, len(library["identity"]))
    per_candidate = prompts * config.seeds_per_prompt * len(config.template_ids)
    images = per_candidate * len(config.candidates)
    guidance_passes = 2 if generate_config.guidance_scale > 1 else 1
    plan = {
        "stage": "select",
        "candidates": list(config.candidates),
        "template_ids": list(config.template_ids),
        "prompts": prompts,
        "images_per_candidate": per_candidate,
        "images": images,
        "unet_evaluations": images * generate_config.num_inference_steps * guidance_passes,
    }
    return write_plan(config.output_dir, plan)


def main(argv: list[str] | None = None) -> Path:
    """Standalone, the generate and filter settings come from the same preset `generate` and `filter` read."""
    from vehicle_diff.config import resolve_config

    config = parse_config(SelectConfig, "select", argv)
    return select_candidates(
        config,
        generate_config=resolve_config(GenerateConfig, "generate", config.preset),
        filter_config=resolve_config(FilterConfig, "filter", config.preset),
    )


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
