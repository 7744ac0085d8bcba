"""Stage 5b: evaluate a re-ID model (paper §IV): mAP / CMC / mINP on VeRi-776, CityFlowV2 (a local identity-
disjoint split, plus a `track2.txt` for the official server), VehicleID (10 seeded gallery draws, mean ± std)
or any dataset with query / gallery splits.

Each variant is reported on its own: `plain` features, `flip` (averaged with the mirrored image, --flip) and
`reranked` (k-reciprocal re-ranking of the flip features, or of the plain ones without --flip; --rerank).
Besides metrics.json / metrics.md: cmc.png (CMC rank 1-50, one curve per variant) and retrieval.png (queries
with their top-k, like the paper's Fig. 4).

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
from vehicle_diff.io import atomic_path

from .metrics import evaluate_rank, k_reciprocal_rerank, pairwise_distance
from .reid_data import Sample, load_image, read_source, read_vehicleid, source_digest

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RERANK = {"k1": 20, "k2": 6, "lambda_value": 0.3}  # Zhong et al.'s setting, the one papers report
VARIANTS = ("plain", "flip", "reranked")
VEHICLEID_SIZES = (800, 1600, 2400)
COLORS = {"match": (0, 158, 72), "wrong": (214, 39, 40), "junk": (150, 150, 150), "query": (40, 40, 40)}


def eval_transform(image_size: list[int], *, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Resize and normalise as training did: callers pass the model's own mean / std (`eval_transform_of`)."""
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize(tuple(image_size)), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )


def eval_transform_of(model):
    """The preprocessing the model was trained with: its input size and its backbone's mean / std, the data
    config saved with it (config.json's pretrained_cfg)."""
    return eval_transform(model.image_size, mean=model.mean, std=model.std)


@torch.no_grad()
def extract_features(
    model,
    samples: list[Sample],
    *,
    batch_size: int = 64,
    flip: bool = False,
    device="cpu",
    progress: bool = True,
    desc: str = "features",
) -> torch.Tensor:
    """L2-normalised retrieval features of `samples`, batched, on `device` (returned on the CPU)."""
    from tqdm.auto import tqdm

    transform = eval_transform_of(model)
    model.eval()
    features = []
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            images = torch.stack([transform(load_image(s.image)) for s in batch])
            features.append(model.extract(images.to(device), flip=flip).float().cpu())
            bar.update(len(batch))
    return torch.cat(features) if features else torch.zeros(0, 1)


def summarize(result: dict) -> dict:
    cmc = result["cmc"]
    return {
        "mAP": result["mAP"],
        "rank1": cmc[0],
        "rank5": cmc[min(4, len(cmc) - 1)],
        "rank10": cmc[min(9, len(cmc) - 1)],
        "mINP": result["mINP"],
        "queries": result["num_valid_queries"],
        "cmc": cmc,
    }


def sample_key(sample: Sample):
    """What identifies an image across splits and draws (VehicleID's draws reuse the same test images)."""
    image = sample.image
    if isinstance(image, tuple):  # (datasets table, row)
        return id(image[0]), image[1]
    return image if isinstance(image, (str, Path)) else id(image)


def evaluation_splits(eval_data: str, vehicleid_draws: int) -> list:
    if eval_data.startswith("vehicleid:"):
        root, _, size = eval_data.removeprefix("vehicleid:").partition(":")
        if size and (not size.isdigit() or int(size) not in VEHICLEID_SIZES):
            raise UserInputError(f"--eval_data {eval_data}: the VehicleID test size is one of {VEHICLEID_SIZES}")
        return [read_vehicleid(root, int(size or 800), draw=draw) for draw in range(vehicleid_draws)]
    return [read_source(eval_data)]


def evaluate_model(
    model,
    eval_data: str,
    *,
    flip: bool,
    rerank: bool,
    vehicleid_draws: int,
    device,
    batch_size: int = 64,
    progress: bool = True,
):
    """Metrics of `model` on a data spec: `data`, and one dict per variant (`plain`; `flip` when `flip`;
    `reranked` when `rerank`) with mAP, rank1/5/10, mINP, queries and the CMC curve; then what the pictures
    need (`distance`, `variant`, `query`, `gallery`, `data`, `cameras` of the first split). Features are extracted once, also
    when VehicleID's draws reuse the test images."""
    splits = evaluation_splits(eval_data, vehicleid_draws)
    if not splits[0].query or not splits[0].gallery:
        raise UserInputError(f"{eval_data}: has no query / gallery split to evaluate on")
    images = list({sample_key(s): s for split in splits for s in split.query + split.gallery}.values())
    position = {sample_key(s): i for i, s in enumerate(images)}
    extract = {"batch_size": batch_size, "device": device, "progress": progress}
    features = {"plain": extract_features(model, images, flip=False, desc="features", **extract)}
    if flip:
        features["flip"] = extract_features(model, images, flip=True, desc="features (flip)", **extract)
    reranked_on = "flip" if flip else "plain"
    results, picture = [], None
    for split in splits:
        rows = torch.tensor([position[sample_key(s)] for s in split.query])
        columns = torch.tensor([position[sample_key(s)] for s in split.gallery])
        distances = {variant: pairwise_distance(f[rows], f[columns]) for variant, f in features.items()}
        if rerank:
            base = features[reranked_on].to(device)
            distances["reranked"] = k_reciprocal_rerank(base[rows], base[columns], **RERANK, progress=progress).cpu()
        ids = [np.array([s.pid for s in part]) for part in (split.query, split.gallery)]
        cameras = [np.array([s.camid for s in part]) for part in (split.query, split.gallery)]
        results.append(
            {
                variant: summarize(evaluate_rank(distance, ids[0], ids[1], cameras[0], cameras[1]))
                for variant, distance in distances.items()
            }
        )
        if picture is None:
            shown = "reranked" if rerank else reranked_on
            picture = {
                "distance": distances[shown],
                "variant": shown,
                "query": split.query,
                "gallery": split.gallery,
                "data": split.name,
                "cameras": split.cameras,
            }
    extra = {"rerank": {"features": reranked_on, **RERANK}} if rerank else {}
    if len(results) == 1:
        return {"data": splits[0].name, **results[0], **extra}, picture
    combined = {"data": f"{splits[0].name.split(' ')[0]} ({len(splits)} draws, mean ± std)"}
    for variant in results[0]:
        combined[variant] = {}
        for metric in results[0][variant]:
            values = np.array([r[variant][metric] for r in results], dtype=np.float64)
            combined[variant][metric] = {"mean": values.mean(axis=0).tolist(), "std": values.std(axis=0).tolist()}
    return {**combined, **extra}, picture


def metrics_markdown(metrics: dict, model_name: str | None = None) -> str:
    lines = [
        f"# Re-ID evaluation: {model_name + ' on ' if model_name else ''}{metrics['data']}",
        "",
        "| variant | mAP | rank-1 | rank-5 | rank-10 | mINP |",
        "|---|---|---|---|---|---|",
    ]
    cell = lambda v: f"{v['mean']:.4f} ± {v['std']:.4f}" if isinstance(v, dict) else f"{v:.4f}"  # noqa: E731
    for variant in VARIANTS:
        if variant in metrics:
            m = metrics[variant]
            lines.append(
                f"| {variant_label(variant, metrics)} | {cell(m['mAP'])} | {cell(m['rank1'])} | {cell(m['rank5'])} "
                f"| {cell(m['rank10'])} | {cell(m['mINP'])} |"
            )
    return "\n".join(lines) + "\n"


def variant_label(variant: str, metrics: dict) -> str:
    if variant == "reranked" and "rerank" in metrics:
        r = metrics["rerank"]
        return f"reranked ({r['features']} features, k1={r['k1']}, k2={r['k2']}, λ={r['lambda_value']})"
    return {"plain": "plain", "flip": "flip (mirrored-image average)"}.get(variant, variant)


def cmc_plot(metrics: dict, out_file: Path, *, title: str) -> None:
    """CMC curves, ranks 1-50, one per variant (mean ± std band over VehicleID draws)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    styles = {"plain": ("tab:blue", "-"), "flip": ("tab:orange", "--"), "reranked": ("tab:green", "-.")}
    for variant in VARIANTS:
        if variant not in metrics:
            continue
        m = metrics[variant]
        mean = lambda v: v["mean"] if isinstance(v, dict) else v  # noqa: E731
        cmc = np.array(mean(m["cmc"]))[:50] * 100
        ranks = np.arange(1, len(cmc) + 1)
        color, style = styles[variant]
        label = f"{variant_label(variant, metrics)}: rank-1 {mean(m['rank1']):.1%}, mAP {mean(m['mAP']):.1%}"
        axes.plot(ranks, cmc, style, color=color, linewidth=2, marker="o" if len(cmc) < 15 else None, label=label)
        if isinstance(m["cmc"], dict):
            std = np.array(m["cmc"]["std"])[:50] * 100
            axes.fill_between(ranks, cmc - std, cmc + std, color=color, alpha=0.2, linewidth=0)
    axes.set_xlim(1, 50)
    axes.set_ylim(top=100.5)
    axes.set_xlabel("rank")
    axes.set_ylabel("matching rate (%)")
    axes.set_title(title, fontsize=11)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    with atomic_path(out_file) as tmp:
        figure.savefig(tmp, format="png")


def retrieval_picture(
    distance: torch.Tensor,
    query: list[Sample],
    gallery: list[Sample],
    out_file: Path,
    *,
    title: str,
    variant: str = "plain",
    num_queries: int = 8,
    top_k: int = 10,
    cameras: bool = True,
    cell: int = 112,
) -> list[dict]:
    """A sheet of queries (evenly spread over those with a true match), each row the query and then its top-k
    gallery images in ranking order, each captioned with rank, distance, vehicle id and camera. Borders: green
    = same vehicle from another camera (correct), red = another vehicle, gray = same vehicle and camera (junk:
    shown, but the protocol skips it, so it takes no rank). Without `cameras` (VehicleID) no camera is shown.
    Returns what each tile shows, and where."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    font, bold = ImageFont.load_default(size=12), ImageFont.load_default(size=16)
    cameras_of: dict[int, set] = {}
    for g in gallery:
        cameras_of.setdefault(g.pid, set()).add(g.camid)
    has_match = [q for q, s in enumerate(query) if cameras_of.get(s.pid, set()) - {s.camid}]
    candidates = has_match or list(range(len(query)))
    shown = sorted(
        {
            candidates[i]
            for i in np.linspace(0, len(candidates) - 1, min(num_queries, len(candidates))).round().astype(int)
        }
    )
    top_k = min(top_k, len(gallery))
    margin, gap, border, text_height, header, footer = 14, 6, 4, 32, 64, 44
    row_height = cell + text_height + 12
    query_width = cell + 3 * gap
    width = 2 * margin + query_width + top_k * (cell + gap)
    sheet = Image.new("RGB", (width, header + len(shown) * row_height + footer), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((margin, 10), title, fill="black", font=bold)
    draw.text(
        (margin, 34),
        f"{variant} distances · {len(shown)} of {len(query)} queries · top-{top_k} · "
        "rank counts as the protocol does (junk takes none)",
        fill=(80, 80, 80),
        font=font,
    )
    tiles = []

    def who(sample: Sample) -> str:
        return f"id {sample.pid} · cam {sample.camid}" if cameras else f"id {sample.pid}"

    def tile(sample: Sample, x: int, y: int, status: str, lines: list[str]) -> tuple:
        picture = ImageOps.pad(load_image(sample.image), (cell - 2 * border, cell - 2 * border), color="white")
        sheet.paste(ImageOps.expand(picture, border=border, fill=COLORS[status]), (x, y))
        if status == "junk":  # a hatch in the corner, so junk reads as junk without color too
            draw.polygon([(x + cell - 22, y), (x + cell, y), (x + cell, y + 22)], fill=COLORS["junk"])
        for number, line in enumerate(lines):
            draw.text((x + 2, y + cell + 2 + 14 * number), line, fill="black" if number else COLORS[status], font=font)
        return x, y, x + cell, y + cell

    for row, q in enumerate(shown):
        y = header + row * row_height
        sample = query[q]
        box = tile(sample, margin, y, "query", ["query", who(sample)])
        tiles.append({"row": row, "query": q, "gallery": None, "rank": None, "status": "query", "box": box})
        separator = margin + cell + gap + gap // 2
        draw.line([(separator, y - 4), (separator, y + cell + text_height)], fill=(120, 120, 120), width=2)
        order = torch.argsort(distance[q].float(), stable=True)[:top_k].tolist()
        rank = 0
        for column, g in enumerate(order):
            candidate = gallery[g]
            same_id = candidate.pid == sample.pid
            status = "junk" if same_id and candidate.camid == sample.camid else "match" if same_id else "wrong"
            rank += status != "junk"
            label = "junk" if status == "junk" else f"#{rank}"
            x = margin + query_width + column * (cell + gap)
            lines = [f"{label}  d={float(distance[q, g]):.3f}", who(candidate)]
            box = tile(candidate, x, y, status, lines)
            tiles.append(
                {
                    "row": row,
                    "query": q,
                    "gallery": g,
                    "rank": rank if status != "junk" else None,
                    "status": status,
                    "box": box,
                }
            )
    legend_y = sheet.height - footer + 14
    x = margin
    legend = [
        ("query", "query"),
        ("match", "same vehicle, other camera (correct)" if cameras else "same vehicle (correct)"),
        ("wrong", "other vehicle (incorrect)"),
    ] + [("junk", "same vehicle and camera (junk, ignored)")] * cameras
    for status, text in legend:
        draw.rectangle([x, legend_y, x + 16, legend_y + 16], outline=COLORS[status], width=4)
        draw.text((x + 22, legend_y + 1), text, fill="black", font=font)
        x += 22 + int(draw.textlength(text, font=font)) + 24
    with atomic_path(out_file) as tmp:
        sheet.save(tmp, format="PNG")
    return tiles


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
    query = extract_features(model, names["query"], flip=flip, device=device, desc="track-2 query")
    gallery = extract_features(model, names["test"], flip=flip, device=device, desc="track-2 test")
    order = torch.topk(pairwise_distance(query, gallery), min(top_k, len(gallery)), dim=1, largest=False).indices + 1
    out_file.write_text("".join(" ".join(map(str, row)) + "\n" for row in order.tolist()))


@dataclass
class EvaluateConfig:
    """Evaluate a re-ID model: mAP / CMC / mINP under the standard protocol."""

    output_dir: str = field(
        default="vehicle-diff-output/evaluation", metadata={"help": "metrics.json/md, cmc.png, retrieval.png"}
    )
    preset: str = field(default="paper", metadata={"help": "paper, toy, tiny, or a YAML file"})
    model: str = field(default="vehicle-diff-output/reid", metadata={"help": "a ReIDModel folder or Hub repo"})
    eval_data: str = field(
        default="vehicle-diff-output/vehicle-diff",
        metadata={"help": "veri776:ROOT, cityflow:ROOT, vehicleid:ROOT[:SIZE], or a dataset[@REVISION]"},
    )
    flip: bool = field(default=False, metadata={"help": "also report flip test-time augmentation (mirrored average)"})
    rerank: bool = field(
        default=False, metadata={"help": "also report k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)"}
    )
    vehicleid_draws: int = field(default=10, metadata={"help": "random gallery draws for VehicleID"})
    track2_root: str | None = field(
        default=None, metadata={"help": "CityFlowV2 folder with name_query/test.txt: write track2.txt"}
    )
    batch_size: int = 64
    retrieval_queries: int = field(default=8, metadata={"help": "queries (rows) in retrieval.png"})
    retrieval_top_k: int = field(default=10, metadata={"help": "gallery images per query in retrieval.png"})
    dry_run: bool = field(default=False, metadata={"help": "read the data lists only; print and write plan.json"})

    def __post_init__(self):
        for name in ("batch_size", "vehicleid_draws", "retrieval_queries", "retrieval_top_k"):
            if getattr(self, name) < 1:
                raise UserInputError(f"--{name} must be at least 1 (got {getattr(self, name)})")
        if self.retrieval_queries > 100 or self.retrieval_top_k > 50:
            raise UserInputError(
                "retrieval.png shows at most 100 queries (--retrieval_queries) x 50 (--retrieval_top_k)"
            )


def main(argv: list[str] | None = None) -> Path:
    return evaluate(parse_config(EvaluateConfig, "evaluate", argv))


def evaluate(config: EvaluateConfig) -> Path:
    """Evaluate into a folder of its own: a new one, or an earlier evaluation (replaced: evaluating again is
    cheap and the result only depends on the model, the data and the settings); anything else is refused."""
    from vehicle_diff.jobs import Job, folder_digest, output_settings

    from .reid_model import ReIDModel

    if config.dry_run:  # the model may not be trained yet
        from vehicle_diff.jobs import write_plan

        split = read_source(config.eval_data)
        plan = {"stage": "evaluate", "data": split.name, "query_images": len(split.query)}
        return write_plan(config.output_dir, {**plan, "gallery_images": len(split.gallery), "model": config.model})
    model_dir, data_root = Path(config.model), Path(config.eval_data.split(":", 1)[-1].rsplit(":", 1)[0])
    components = {"settings": output_settings(config, ignore=("model", "eval_data")),
                  "model": folder_digest(model_dir) if model_dir.is_dir() else config.model,
                  "eval_data": source_digest(config.eval_data)}  # fmt: skip
    job = Job(config.output_dir, "evaluate", components, overwrite=True, inputs=[model_dir, data_root],
              owned=["metrics.json", "metrics.md", "cmc.png", "retrieval.png", "track2.txt", "config.yaml"]).open()  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = ReIDModel.from_pretrained(config.model).to(device)
    except (OSError, ValueError) as error:
        raise UserInputError(f"--model {config.model}: not a re-ID model folder or repo ({error})") from error
    out_dir = job.out_dir
    metrics, picture = evaluate_model(
        model,
        config.eval_data,
        flip=config.flip,
        rerank=config.rerank,
        vehicleid_draws=config.vehicleid_draws,
        device=device,
        batch_size=config.batch_size,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    cmc_plot(metrics, out_dir / "cmc.png", title=f"CMC: {config.model} on {metrics['data']}")
    retrieval_picture(
        picture["distance"],
        picture["query"],
        picture["gallery"],
        out_dir / "retrieval.png",
        title=f"Retrieval: {config.model} on {picture['data']}",
        variant=picture["variant"],
        num_queries=config.retrieval_queries,
        top_k=config.retrieval_top_k,
        cameras=picture["cameras"],
    )
    if config.track2_root:
        write_track2(model, config.track2_root, out_dir / "track2.txt", flip=config.flip, device=device)
    save_config(config, out_dir / "config.yaml", stage="evaluate")
    (out_dir / "metrics.md").write_text(metrics_markdown(metrics, config.model))
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    job.mark_done({"data": metrics["data"]})
    print(
        metrics_markdown(metrics, config.model) + f"\nmetrics: {out_dir / 'metrics.json'}\n"
        f"pictures: {out_dir / 'cmc.png'}, {out_dir / 'retrieval.png'}"
    )
    return out_dir


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
