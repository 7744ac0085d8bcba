"""Stage 5b: evaluate a re-ID model (paper §IV): mAP / CMC / mINP on VeRi-776, CityFlowV2 (a local identity-
disjoint split, plus a `track2.txt` for the official server), VehicleID (10 seeded gallery draws, mean ± std)
or any dataset with query / gallery splits; optional flip test-time augmentation and k-reciprocal re-ranking
(reported separately); a retrieval picture like the paper's Fig. 4.

    vehicle-diff evaluate --model out/reid --eval_data veri776:/data/VeRi --flip --rerank
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vehicle_diff.config import parse_config, save_config
from vehicle_diff.errors import UserInputError

from .metrics import evaluate_rank, k_reciprocal_rerank, pairwise_distance
from .reid_data import Sample, load_image, read_source, read_vehicleid

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def eval_transform(image_size: list[int]):
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize(tuple(image_size)), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


@torch.no_grad()
def extract_features(
    model, samples: list[Sample], *, batch_size: int = 64, flip: bool = False, device="cpu"
) -> torch.Tensor:
    """L2-normalised retrieval features of `samples`, batched, on `device`."""
    transform = eval_transform(model.image_size)
    model.eval()
    features = []
    for start in range(0, len(samples), batch_size):
        images = torch.stack([transform(load_image(s.image)) for s in samples[start : start + batch_size]])
        features.append(model.extract(images.to(device), flip=flip).float().cpu())
    return torch.cat(features) if features else torch.zeros(0, 1)


def rank_metrics(
    query_features, gallery_features, query: list[Sample], gallery: list[Sample], *, rerank: bool = False
) -> dict:
    distance = pairwise_distance(query_features, gallery_features)
    ids = lambda samples: np.array([s.pid for s in samples])  # noqa: E731
    cams = lambda samples: np.array([s.camid for s in samples])  # noqa: E731
    result = {"plain": summarize(evaluate_rank(distance, ids(query), ids(gallery), cams(query), cams(gallery)))}
    if rerank:
        reranked = k_reciprocal_rerank(query_features, gallery_features, k1=20, k2=6, lambda_value=0.3)
        result["reranked"] = summarize(evaluate_rank(reranked, ids(query), ids(gallery), cams(query), cams(gallery)))
    return result, distance


def summarize(result: dict) -> dict:
    cmc = result["cmc"]
    return {"mAP": result["mAP"], "rank1": cmc[0], "rank5": cmc[min(4, len(cmc) - 1)], "rank10": cmc[min(9, len(cmc) - 1)],
            "mINP": result["mINP"], "queries": result["num_valid_queries"]}  # fmt: skip


def retrieval_picture(distance: torch.Tensor, query: list[Sample], gallery: list[Sample], out_file: Path, *, num_queries: int = 4,
                      top_k: int = 10, cell: int = 96) -> None:  # fmt: skip
    """Each row: a query, then its top-k gallery images with green (same id) or red (other id) borders.
    Same-id same-camera gallery images (junk under the protocol) are skipped."""
    from PIL import Image, ImageDraw, ImageOps

    from vehicle_diff.io import atomic_path

    rows, top_k = min(num_queries, len(query)), min(top_k, len(gallery))
    sheet = Image.new("RGB", ((top_k + 1) * (cell + 8) + 8, rows * (cell + 8) + 8), "white")
    for row in range(rows):
        order = torch.argsort(distance[row], stable=True).tolist()
        shown = [g for g in order if not (gallery[g].pid == query[row].pid and gallery[g].camid == query[row].camid)][
            :top_k
        ]
        tiles = [(query[row], "black")] + [
            (gallery[g], "green" if gallery[g].pid == query[row].pid else "red") for g in shown
        ]
        for column, (sample, color) in enumerate(tiles):
            tile = ImageOps.fit(load_image(sample.image), (cell - 6, cell - 6))
            framed = ImageOps.expand(tile, border=3, fill=color)
            sheet.paste(framed, (8 + column * (cell + 8), 8 + row * (cell + 8)))
        ImageDraw.Draw(sheet).line(
            [(cell + 12, 8 + row * (cell + 8)), (cell + 12, (row + 1) * (cell + 8))], fill="gray", width=2
        )
    with atomic_path(out_file) as tmp:
        sheet.save(tmp, format="PNG")


def write_track2(model, root: str, out_file: Path, *, flip: bool, device, top_k: int = 100) -> None:
    """AI City Challenge track 2 submission: for each line of name_query.txt, the 1-based indices of the
    top-100 images of name_test.txt, space separated."""
    root = Path(root)
    names = {}
    for split, folder in (("query", "image_query"), ("test", "image_test")):
        listing = root / f"name_{split}.txt"
        if not listing.is_file() or not (root / folder).is_dir():
            raise UserInputError(f"{root}: expected {folder}/ and name_{split}.txt for the track-2 export")
        names[split] = [
            Sample(root / folder / line.strip(), -1, -1) for line in listing.read_text().splitlines() if line.strip()
        ]
    query = extract_features(model, names["query"], flip=flip, device=device)
    gallery = extract_features(model, names["test"], flip=flip, device=device)
    order = torch.topk(pairwise_distance(query, gallery), min(top_k, len(gallery)), dim=1, largest=False).indices + 1
    out_file.write_text("".join(" ".join(map(str, row)) + "\n" for row in order.tolist()))


@dataclass
class EvaluateConfig:
    """Evaluate a re-ID model: mAP / CMC / mINP under the standard protocol."""

    output_dir: str = field(
        default="vehicle-diff-output/evaluation", metadata={"help": "metrics.json/md, retrieval.png"}
    )
    preset: str = field(default="paper", metadata={"help": "paper, tiny, or a YAML file"})
    model: str = field(default="vehicle-diff-output/reid", metadata={"help": "a ReIDModel folder or Hub repo"})
    eval_data: str = field(
        default="vehicle-diff-output/dataset",
        metadata={"help": "veri776:ROOT, cityflow:ROOT, vehicleid:ROOT[:SIZE], or a dataset"},
    )
    flip: bool = field(default=False, metadata={"help": "average features with the mirrored image"})
    rerank: bool = field(
        default=False, metadata={"help": "also report k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)"}
    )
    vehicleid_draws: int = field(default=10, metadata={"help": "random gallery draws for VehicleID"})
    track2_root: str | None = field(
        default=None, metadata={"help": "CityFlowV2 folder with name_query/test.txt: write track2.txt"}
    )
    batch_size: int = 64


def evaluate_model(
    model, eval_data: str, *, flip: bool, rerank: bool, vehicleid_draws: int, device, batch_size: int = 64
):
    """Metrics of `model` on a data spec, and what the retrieval picture needs."""
    if eval_data.startswith("vehicleid:"):
        root, _, size = eval_data.removeprefix("vehicleid:").partition(":")
        runs = [read_vehicleid(root, int(size or 800), draw=draw) for draw in range(vehicleid_draws)]
    else:
        runs = [read_source(eval_data)]
    if not runs[0].query or not runs[0].gallery:
        raise UserInputError(f"{eval_data}: has no query / gallery split to evaluate on")
    results, picture = [], None
    for split in runs:
        query_features = extract_features(model, split.query, batch_size=batch_size, flip=flip, device=device)
        gallery_features = extract_features(model, split.gallery, batch_size=batch_size, flip=flip, device=device)
        result, distance = rank_metrics(query_features, gallery_features, split.query, split.gallery, rerank=rerank)
        results.append(result)
        picture = picture or (distance, split.query, split.gallery)
    if len(results) == 1:
        return {"data": runs[0].name, **results[0]}, picture
    combined = {"data": f"{runs[0].name.split(' ')[0]} ({len(runs)} draws, mean ± std)"}
    for variant in results[0]:
        combined[variant] = {metric: {"mean": float(np.mean([r[variant][metric] for r in results])),
                                      "std": float(np.std([r[variant][metric] for r in results]))}
                             for metric in results[0][variant]}  # fmt: skip
    return combined, picture


def metrics_markdown(metrics: dict) -> str:
    lines = [
        f"# Re-ID evaluation: {metrics['data']}",
        "",
        "| variant | mAP | rank-1 | rank-5 | rank-10 | mINP |",
        "|---|---|---|---|---|---|",
    ]
    for variant in ("plain", "reranked"):
        if variant in metrics:
            m = metrics[variant]
            cell = lambda v: f"{v['mean']:.4f} ± {v['std']:.4f}" if isinstance(v, dict) else f"{v:.4f}"  # noqa: E731
            lines.append(
                f"| {variant} | {cell(m['mAP'])} | {cell(m['rank1'])} | {cell(m['rank5'])} | {cell(m['rank10'])} | {cell(m['mINP'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    return evaluate(parse_config(EvaluateConfig, "evaluate", argv))


def evaluate(config: EvaluateConfig) -> Path:
    from .reid_model import ReIDModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = ReIDModel.from_pretrained(config.model).to(device)
    except (OSError, ValueError) as error:
        raise UserInputError(f"--model {config.model}: not a re-ID model folder or repo ({error})") from error
    out_dir = Path(config.output_dir)
    metrics, (distance, query, gallery) = evaluate_model(model, config.eval_data, flip=config.flip, rerank=config.rerank,
                                                        vehicleid_draws=config.vehicleid_draws, device=device,
                                                        batch_size=config.batch_size)  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "metrics.md").write_text(metrics_markdown(metrics))
    retrieval_picture(distance, query, gallery, out_dir / "retrieval.png")
    if config.track2_root:
        write_track2(model, config.track2_root, out_dir / "track2.txt", flip=config.flip, device=device)
    save_config(config, out_dir / "config.yaml", stage="evaluate")
    print(
        metrics_markdown(metrics)
        + f"\nmetrics: {out_dir / 'metrics.json'}\nretrieval picture: {out_dir / 'retrieval.png'}"
    )
    return out_dir


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
