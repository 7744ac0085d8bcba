"""Jinja templates of the dataset and model cards, rendered through huggingface_hub's card classes.

Each stage saves the facts its card needs as `card_context.json` beside its outputs and renders `README.md` for
the local folder. `vehicle-diff publish` renders the card again from the same facts with the repo id and version
it publishes to, so that no published card holds a placeholder or a path of the machine that made it.

The cards claim only what the saved settings say: the base model that was used, whether the CLIP color check
decided anything, which data trained a re-ID model, and the license that follows from those.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path

from vehicle_diff.models import ZOO_PREFIXES

CONTEXT_FILE = "card_context.json"
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
# Base models whose license the generated images and LoRAs inherit: Hub id -> (card license id, name, link)
BASE_MODEL_LICENSES = {
    SDXL_BASE: ("openrail++", "CreativeML Open RAIL++-M", f"https://huggingface.co/{SDXL_BASE}/blob/main/LICENSE.md"),
    "stabilityai/stable-diffusion-xl-base-0.9": (
        "other",
        "SDXL 0.9 research license",
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-0.9",
    ),
}
# Real re-ID datasets (the `--real_data` kinds): name, terms, where the terms are
REAL_DATASETS = {
    "veri776": ("VeRi-776", "research use only, no redistribution", "https://vehiclereid.github.io/VeRi/"),
    "cityflow": (
        "CityFlowV2",
        "AI City Challenge data license: non-commercial research only",
        "https://www.aicitychallenge.org/",
    ),
    "vehicleid": ("VehicleID", "research use only", "https://www.pkuml.org/resources/pku-vehicleid.html"),
}
# The paper, named as its text names itself: title and authors. The text gives no arXiv id or DOI, so the cards
# state none (set PAPER_ID, e.g. "arxiv:XXXX.XXXXX", once the paper has one: the Hub links a card's `arxiv:` tag).
PAPER = {
    "title": "Coarse-to-Fine Cross-modality Generation for Enhancing Vehicle Re-Identification with High-Fidelity "
    "Synthetic Data",
    "authors": "Leyang Jin, Wei Ji, Tat-Seng Chua, Zhedong Zheng",
    "id": None,
}


def code_repository() -> str | None:
    """The `Repository` URL the installed distribution declares (pyproject.toml [project.urls]); None while it
    declares none, and the cards then name the package and version without inventing a link."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        urls = metadata("vehicle-diff").get_all("Project-URL") or []
    except PackageNotFoundError:
        return None
    return next((url.split(",", 1)[1].strip() for url in urls if url.lower().startswith("repository,")), None)


CODE_REPOSITORY = code_repository()
CITATION = """@article{jin2024vehiclediff,
  title  = {Coarse-to-Fine Cross-modality Generation for Enhancing Vehicle Re-Identification with High-Fidelity Synthetic Data},
  author = {Jin, Leyang and Ji, Wei and Chua, Tat-Seng and Zheng, Zhedong},
  year   = {2024}
}"""


def is_hub_id(name: str | None) -> bool:
    """`org/name` (huggingface_hub's rules) that is not a folder here: what a card may link to."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or name.startswith(ZOO_PREFIXES) or Path(name).exists() or name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def model_ref(name: str | None) -> dict:
    """How a card names a model given by id or path: Hub ids and zoo ids (`tiny:`, `toy:`) as they are, a local path by its
    last component only (the rest is the machine's business)."""
    if not name:
        return {"name": None, "hub": False, "tiny": False, "local": False}
    name = str(name)
    hub_name = name.removeprefix("hf-hub:").split("@")[0]
    if is_hub_id(hub_name):
        return {"name": hub_name, "hub": True, "tiny": False, "local": False}
    if name.startswith(ZOO_PREFIXES):
        return {"name": name, "hub": False, "tiny": True, "local": False}
    if "/" in name or "\\" in name or Path(name).exists():
        return {"name": Path(name.removeprefix("local-dir:")).name, "hub": False, "tiny": False, "local": True}
    return {"name": name, "hub": False, "tiny": False, "local": False}  # a library's own name, e.g. timm's


def recorded_revisions(folder: Path) -> dict[str, str]:
    """The revisions a stage resolved for the models it used (`*_revision` in its `job.json` components: a Hub
    commit, or `sha256:` of a local model's content), as the job layer recorded them when the stage started."""
    path = Path(folder) / "job.json"
    components = (json.loads(path.read_text()).get("components") or {}) if path.is_file() else {}
    return {key: value for key, value in components.items() if key.endswith("_revision") and isinstance(value, str)}


def provenance_row(role: str, model: dict | None, revision: str | None, **extra) -> dict | None:
    """One line of a card's provenance table: what the model did, its name (a `model_ref`) and exact revision."""
    if not model or not model.get("name"):
        return None
    kind = "datasets/" if extra.pop("dataset", False) else ""
    link = f"https://huggingface.co/{kind}{model['name']}" if model.get("hub") else None
    return {"role": role, "name": model["name"], "link": link, "revision": revision, **extra}


def common_context(rows: list[dict | None]) -> dict:
    """What every card states besides its own facts: the paper, the code, and the exact models behind it."""
    return {"paper": PAPER, "code_repository": CODE_REPOSITORY, "provenance": [row for row in rows if row]}


def paper_tags() -> list[str]:
    return [PAPER["id"]] if PAPER["id"] else []


def save_context(out_dir: Path, context: dict) -> None:
    from vehicle_diff.io import atomic_path

    with atomic_path(Path(out_dir) / CONTEXT_FILE) as tmp:
        tmp.write_text(json.dumps(context, indent=2, default=str) + "\n")  # key order matters: dataset_info features


def load_context(folder: Path) -> dict | None:
    path = Path(folder) / CONTEXT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def dataset_info(dataset, data_dir: Path) -> dict:
    """The card's `dataset_info` exactly as `DatasetDict.push_to_hub` writes it: features, per split its bytes in
    Arrow and its examples, the Parquet bytes (`download_size`) and the Arrow bytes (`dataset_size`)."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    splits = SplitDict()
    for name, table in dataset.items():
        splits.add(SplitInfo(name=name, num_bytes=table.data.nbytes, num_examples=len(table)))
    parquet = sum(path.stat().st_size for path in Path(data_dir).glob("*.parquet"))
    arrow = sum(split.num_bytes for split in splits.values())
    info = DatasetInfo(
        features=next(iter(dataset.values())).features,
        splits=splits,
        download_size=parquet,
        dataset_size=arrow,
        size_in_bytes=parquet + arrow,
    )
    card_data = DatasetCardData()
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    return card_data["dataset_info"]


def _template(name: str) -> str:
    return str(files("vehicle_diff.cards") / name)


def base_model_license(base: dict) -> dict:
    """The license fields of data or weights made with `base` (a `model_ref`)."""
    if base["tiny"]:
        return {"license": "apache-2.0"}  # zoo weights made by this package (random or toy-trained): its license
    if base["hub"] and base["name"] in BASE_MODEL_LICENSES:
        license_id, name, link = BASE_MODEL_LICENSES[base["name"]]
        return (
            {"license": license_id}
            if license_id != "other"
            else {
                "license": "other",
                "license_name": re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"),
                "license_link": link,
            }
        )
    link = f"https://huggingface.co/{base['name']}" if base["hub"] else None
    return {"license": "other", "license_name": "base-model-license", **({"license_link": link} if link else {})}


def render_dataset_card(
    context: dict, *, repo_id: str | None = None, revision: str | None = None, target: str | None = None
):
    """The dataset card: `dataset_info` as `push_to_hub` writes it, the HF dataset-card template's sections, and
    statements that follow from the generate / filter settings saved beside the outputs. `target` (`hub` or
    `mirror`) is where the card is published: the Hub streams, an olah mirror serves whole files only."""
    from huggingface_hub import DatasetCard, DatasetCardData

    generation = context.get("generation") or {}
    filtering = context.get("filter") or {}
    base = generation.get("base_model") or model_ref(None)
    lora = generation.get("lora") or {}
    lora_ref = {"name": lora.get("repo") or lora.get("file"), "hub": bool(lora.get("repo"))}
    common = common_context(
        [
            provenance_row("text-to-image base model", base, generation.get("base_model_revision")),
            provenance_row("LoRA", lora_ref, f"sha256:{lora['sha256']}" if lora.get("sha256") else None),
            provenance_row(
                "captioner (LoRA training captions)", lora.get("caption_model"), lora.get("caption_revision")
            ),
            provenance_row("detector", filtering.get("detector"), filtering.get("detector_revision")),
            provenance_row("CLIP (color check)", filtering.get("clip_model"), filtering.get("clip_revision")),
        ]
    )
    card_data = DatasetCardData(
        pretty_name="vehicle-diff: synthetic vehicle re-identification data",
        **base_model_license(base),
        language=["en"],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        multilinguality=["monolingual"],
        source_datasets=["original"],
        size_categories=[context["size_category"]],
        task_categories=["image-classification", "image-feature-extraction"],
        tags=["synthetic", "vehicle-re-identification", "re-identification", "vehicle-diff"]
        + (["stable-diffusion-xl"] if base["hub"] and "xl" in base["name"] else [])
        + paper_tags(),
        configs=[
            {"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in context["splits"]]}
        ],
        dataset_info=context.get("dataset_info"),
    )
    return DatasetCard.from_template(
        card_data,
        template_path=_template("dataset_card.md"),
        repo_id=repo_id,
        revision=revision,
        base=base,
        base_license=BASE_MODEL_LICENSES.get(base["name"]) if base["hub"] else None,
        citation=CITATION,
        target=target,
        **common,
        **context,
    )


def render_lora_card(
    context: dict, *, repo_id: str | None = None, revision: str | None = None, target: str | None = None
):
    """The LoRA card with the metadata diffusers' SDXL LoRA training example writes (`base_model`, `instance_prompt`,
    `widget`, its tags) and a load snippet that runs as written (the Hub id, or this folder)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = context["base_model"]
    widget = [{"text": image["prompt"], "output": {"url": image["file"]}} for image in context.get("widget") or []]
    card_data = ModelCardData(
        **base_model_license(base),
        library_name="diffusers",
        base_model=base["name"] if base["hub"] else None,
        instance_prompt=context.get("instance_prompt") or None,
        widget=widget or None,
        datasets=context.get("datasets") or None,
        tags=[
            "text-to-image",
            "diffusers-training",
            "diffusers",
            "lora",
            "template:sd-lora",
            "stable-diffusion-xl",
            "stable-diffusion-xl-diffusers",
            "vehicle-re-identification",
            "vehicle-diff",
            *paper_tags(),
        ],
    )
    common = common_context(
        [
            provenance_row("base model", base, context.get("base_revision")),
            provenance_row("captioner", context.get("caption_model"), context.get("caption_model_revision")),
        ]
    )
    known = BASE_MODEL_LICENSES.get(base["name"]) if base["hub"] else None
    license_note = (
        (
            f"Derived from {base['name']}, released under the [{known[1]}]({known[2]}) license: its use-based "
            "restrictions apply to these weights and to what they generate."
        )
        if known
        else None
    )
    return ModelCard.from_template(
        card_data,
        template_path=_template("lora_card.md"),
        repo_id=repo_id,
        revision=revision,
        base=base,
        license_note=license_note,
        citation=CITATION,
        **common,
        **context,
    )


def reid_license(real: list[dict], synthetic: dict | None) -> dict:
    """Weights trained on data carry that data's terms: research-only real sets, or the base model's use
    restrictions for images it generated."""
    known = [REAL_DATASETS[item["kind"]] for item in real if item["kind"] in REAL_DATASETS]
    if known:
        return {"license": "other", "license_name": "research-only", "license_link": known[0][2]}
    if real:
        return {"license": "other", "license_name": "training-data-license"}
    if synthetic and synthetic.get("base_model"):
        return base_model_license(synthetic["base_model"])
    if synthetic:  # made by a model this card cannot name: the data's own terms
        link = f"https://huggingface.co/datasets/{synthetic['name']}" if synthetic.get("hub") else None
        return {"license": "other", "license_name": "training-data-license", **({"license_link": link} if link else {})}
    return {"license": "apache-2.0"}


def render_reid_card(
    context: dict,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    dataset_repo: str | None = None,
    dataset_revision: str | None = None,
    target: str | None = None,
):
    """The re-ID card: `base_model` the timm Hub id of the starting weights, the training data's license, and a
    model-index whose dataset is named by Hub id, split and revision. `dataset_repo` / `dataset_revision` name the
    synthetic dataset when it is published alongside (otherwise the id the model was trained from, if a Hub id)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    synthetic = context.get("synthetic_data")
    if synthetic and dataset_repo:
        synthetic = {**synthetic, "name": dataset_repo, "hub": True, "revision": dataset_revision}
    evaluation = context.get("eval_data") or {}
    if evaluation.get("is_synthetic") and dataset_repo:
        evaluation = {**evaluation, "name": dataset_repo, "hub": True, "revision": dataset_revision}
    metrics, results = context.get("metrics"), []
    if metrics:
        for name, key in (("mAP", "mAP"), ("rank-1", "rank1"), ("rank-5", "rank5"), ("mINP", "mINP")):
            results.append(
                EvalResult(
                    task_type="image-feature-extraction",
                    task_name="vehicle re-identification",
                    dataset_type=evaluation.get("name") or "unknown",
                    dataset_name=evaluation.get("title") or "evaluation data",
                    dataset_split=evaluation.get("split"),
                    dataset_revision=evaluation.get("revision") if evaluation.get("hub") else None,
                    metric_type=key,
                    metric_name=name,
                    metric_value=round(metrics["plain"][key], 4),
                )
            )
    datasets = [d["name"] for d in (synthetic,) if d and d.get("hub")]
    card_data = ModelCardData(
        model_name=f"vehicle-diff re-ID {context['architecture']}",
        base_model=context.get("base_model_hub_id"),
        library_name="timm",
        pipeline_tag="image-feature-extraction",
        datasets=datasets or None,
        **reid_license(context.get("real_data") or [], synthetic),
        tags=["vehicle-re-identification", "vehicle-diff", "timm", "image-feature-extraction", *paper_tags()],
        eval_results=results or None,
    )
    backbone = context.get("backbone") or model_ref(None)
    if context.get("base_model_hub_id"):
        backbone = {"name": context["base_model_hub_id"], "hub": True}
    common = common_context(
        [
            provenance_row("backbone start", backbone, context.get("backbone_revision"))
            if (context.get("config") or {}).get("pretrained_backbone", True)
            else None,
            provenance_row("synthetic training data", synthetic, (synthetic or {}).get("revision"), dataset=True),
            provenance_row(
                "images of the synthetic data",
                (synthetic or {}).get("base_model"),
                (synthetic or {}).get("base_revision"),
            ),
        ]
    )
    return ModelCard.from_template(
        card_data,
        template_path=_template("reid_card.md"),
        repo_id=repo_id,
        revision=revision,
        citation=CITATION,
        **common,
        synthetic=synthetic,
        evaluation=evaluation,
        real_datasets=REAL_DATASETS,
        # cards saved before the timm-format facts existed render without them
        **{
            "timm_args": {},
            "embedding_dim": None,
            **{k: v for k, v in context.items() if k not in ("synthetic_data", "eval_data")},
        },
    )


RENDERERS = {"dataset": render_dataset_card, "lora": render_lora_card, "reid": render_reid_card}
