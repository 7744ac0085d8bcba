"""The evaluate stage: variants, features extracted once, flag checks, and what the pictures show."""

import json

import numpy as np
import pytest
import torch
from vehicle_diff.training.evaluate import COLORS, evaluate_model, main, retrieval_picture
from vehicle_diff.training.metrics import evaluate_rank, pairwise_distance
from vehicle_diff.training.reid_data import Sample, read_veri776
from vehicle_diff.training.reid_model import ReIDModel

from vehicle_diff.errors import UserInputError


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("reid") / "model"
    ReIDModel(architecture="test_resnet", num_classes=6, image_size=[32, 32]).eval().save_pretrained(folder)
    return folder


def test_variants_pictures_and_metrics_of_the_features(model_folder, veri_folder, tmp_path):
    out = main(
        [
            "--preset",
            "tiny",
            "--model",
            str(model_folder),
            "--eval_data",
            f"veri776:{veri_folder}",
            "--flip",
            "--rerank",
            "--retrieval_queries",
            "3",
            "--output_dir",
            str(tmp_path / "eval"),
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"plain", "flip", "reranked", "data", "rerank"} <= set(metrics) and metrics["data"] == "VeRi-776"
    assert metrics["rerank"] == {"features": "flip", "k1": 20, "k2": 6, "lambda_value": 0.3}
    for variant in ("plain", "flip", "reranked"):
        assert len(metrics[variant]["cmc"]) == 16 and metrics[variant]["rank1"] == metrics[variant]["cmc"][0]
    markdown = (out / "metrics.md").read_text()
    assert "| flip (mirrored-image average) |" in markdown and "reranked (flip features, k1=20" in markdown

    # the plain variant is the protocol applied to the model's own features of the same images
    model = ReIDModel.from_pretrained(model_folder).eval()
    split = read_veri776(str(veri_folder))
    from vehicle_diff.training.evaluate import eval_transform
    from vehicle_diff.training.reid_data import load_image

    transform = eval_transform([32, 32], mean=model.mean, std=model.std)
    with torch.no_grad():
        features = [
            model.extract(torch.stack([transform(load_image(s.image)) for s in part]), flip=flip)
            for part in (split.query, split.gallery)
            for flip in (False, True)
        ]
    ids = [np.array([s.pid for s in part]) for part in (split.query, split.gallery)]
    cams = [np.array([s.camid for s in part]) for part in (split.query, split.gallery)]
    for variant, (q, g) in (("plain", (features[0], features[2])), ("flip", (features[1], features[3]))):
        expected = evaluate_rank(pairwise_distance(q, g), ids[0], ids[1], cams[0], cams[1])
        assert metrics[variant]["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    from PIL import Image

    with Image.open(out / "cmc.png") as cmc, Image.open(out / "retrieval.png") as retrieval:
        assert cmc.size == (900, 600) and retrieval.height > 3 * 112


def write_vehicleid(root, num_ids=5, per_id=3):
    from tests.conftest import write_images

    names = [f"{pid:05d}{n}" for pid in range(num_ids) for n in range(per_id)]
    write_images(root / "image", [f"{name}.jpg" for name in names], size=(40, 40))
    (root / "train_test_split").mkdir(parents=True)
    lines = "".join(f"{name} {pid}\n" for name, pid in zip(names, np.repeat(range(num_ids), per_id), strict=True))
    (root / "train_test_split" / "train_list.txt").write_text(lines)
    (root / "train_test_split" / "test_list_800.txt").write_text(lines)


def test_vehicleid_draws_share_one_feature_pass(model_folder, tmp_path):
    write_vehicleid(tmp_path / "VehicleID")
    model = ReIDModel.from_pretrained(model_folder).eval()
    seen = []
    extract = model.extract
    model.extract = lambda images, flip=False: seen.append(len(images)) or extract(images, flip=flip)
    metrics, picture = evaluate_model(
        model,
        f"vehicleid:{tmp_path / 'VehicleID'}:800",
        flip=False,
        rerank=False,
        vehicleid_draws=3,
        device="cpu",
        batch_size=4,
        progress=False,
    )
    assert sum(seen) == 15  # 15 test images, once, for 3 draws
    assert metrics["data"].startswith("VehicleID-800 (3 draws")
    assert set(metrics["plain"]["mAP"]) == {"mean", "std"} and len(metrics["plain"]["cmc"]["mean"]) == 5
    assert picture["distance"].shape == (10, 5) and picture["variant"] == "plain"
    from vehicle_diff.training.evaluate import cmc_plot

    cmc_plot(metrics, tmp_path / "cmc.png", title="CMC: test_resnet on VehicleID-800")
    assert (tmp_path / "cmc.png").stat().st_size > 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch_size", "0"], "--batch_size must be at least 1"),
        (["--vehicleid_draws", "-1"], "--vehicleid_draws must be at least 1"),
        (["--retrieval_top_k", "0"], "--retrieval_top_k must be at least 1"),
        (["--retrieval_queries", "500"], "at most 100 queries"),
    ],
)
def test_numeric_flags_are_range_checked(flags, message):
    with pytest.raises(UserInputError, match=message):
        main(["--preset", "tiny", *flags])


def test_vehicleid_size_is_checked(model_folder, tmp_path):
    with pytest.raises(UserInputError, match="one of"):
        main(
            [
                "--preset",
                "tiny",
                "--model",
                str(model_folder),
                "--eval_data",
                f"vehicleid:{tmp_path}:700",
                "--output_dir",
                str(tmp_path / "eval"),
            ]
        )


def test_retrieval_sheet_marks_matches_mistakes_and_junk(tmp_path):
    from PIL import Image

    from tests.conftest import write_images

    write_images(tmp_path / "img", [f"{i}.png" for i in range(8)], size=(30, 50))
    image = lambda i: tmp_path / "img" / f"{i}.png"  # noqa: E731
    query = [Sample(image(0), 1, 0), Sample(image(1), 2, 0), Sample(image(2), 9, 0)]  # id 9: no true match
    gallery = [Sample(image(3), 1, 0), Sample(image(4), 1, 1), Sample(image(5), 2, 1), Sample(image(6), 3, 1)]
    distance = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    tiles = retrieval_picture(distance, query, gallery, tmp_path / "sheet.png", title="Retrieval: test", top_k=3)
    rows = {}
    for t in tiles:
        rows.setdefault(t["row"], []).append((t["status"], t["rank"], t["gallery"]))
    assert len(rows) == 2  # the query without a true match is not shown
    assert rows[0] == [("query", None, None), ("junk", None, 0), ("match", 1, 1), ("wrong", 2, 2)]
    assert rows[1] == [("query", None, None), ("wrong", 1, 3), ("match", 2, 2), ("wrong", 3, 1)]
    with Image.open(tmp_path / "sheet.png") as sheet:
        for t in tiles:
            x0, y0, _, _ = t["box"]
            assert sheet.convert("RGB").getpixel((x0 + 1, y0 + 40)) == COLORS[t["status"]]  # the border
