"""Dry runs at the paper's scale, on inputs made of tiny (empty) files: the plans' numbers, no model loaded."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from vehicle_diff.generation.caption import select_subset

NO_MODEL = "no/such-model"  # a dry run that loaded a model would fail on this id


def plan(folder):
    return json.loads((folder / "plan.json").read_text())


def touch_all(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).touch()


@pytest.fixture(scope="module")
def veri_layout(tmp_path_factory):
    """VeRi-776's file names: 37,778 train images of 576 ids, 1,678 query and 11,579 test images (all empty)."""
    root = tmp_path_factory.mktemp("veri") / "VeRi"
    train = [f"{1 + i % 576:04d}_c{1 + i % 20:03d}_{i:08d}_0.jpg" for i in range(37_778)]
    touch_all(root / "image_train", train)
    touch_all(root / "image_query", [f"{1 + i % 200:04d}_c001_{i:08d}_0.jpg" for i in range(1_678)])
    touch_all(root / "image_test", [f"{1 + i % 200:04d}_c002_{i:08d}_0.jpg" for i in range(11_579)])
    return root


def test_one_percent_is_rounded_as_the_paper_counts():
    assert len(select_subset(37_778, fraction=0.01, num_images=None, seed=0)) == 378
    assert len(select_subset(52_717, fraction=0.01, num_images=None, seed=0)) == 527


def test_caption_dry_run_selects_378_of_veri(veri_layout, tmp_path):
    from vehicle_diff.generation.caption import main

    main(
        [
            "--preset",
            "paper",
            "--input_images",
            str(veri_layout / "image_train"),
            "--caption_model",
            NO_MODEL,
            "--output_dir",
            str(tmp_path / "captions"),
            "--dry_run",
        ]
    )
    result = plan(tmp_path / "captions")
    assert (result["images"], result["selected"], result["batches"]) == (37_778, 378, 24)


def test_finetune_dry_run_counts_steps_warmup_and_the_sdxl_lora(tmp_path):
    from vehicle_diff.training.finetune_lora import main

    train = tmp_path / "captions" / "train"
    train.mkdir(parents=True)
    (train / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.jpg", "text": "a car"}) + "\n" for i in range(378))
    )
    main(
        [
            "--preset",
            "paper",
            "--train_data_dir",
            str(tmp_path / "captions"),
            "--output_dir",
            str(tmp_path / "lora"),
            "--dry_run",
        ]
    )
    result = plan(tmp_path / "lora")
    assert (result["steps_per_epoch"], result["total_steps"], result["warmup_steps"]) == (378, 37_800, 7_560)
    # rank-4 LoRA on the attention projections of SDXL's up blocks, counted on the meta device
    assert result["lora_parameters"] == 2_955_264 and result["lora_file_mb"] == pytest.approx(11.82)
    assert result["checkpoints_written"] == 75


def test_generate_dry_run_plans_the_paper_dataset_before_its_lora_exists(tmp_path):
    from vehicle_diff.generation.generate import main as generate
    from vehicle_diff.generation.prompts import main as prompts

    library = prompts(["--preset", "paper", "--output_dir", str(tmp_path / "prompts")])
    generate(
        [
            "--preset",
            "paper",
            "--prompts",
            str(library),
            "--pretrained_model_name_or_path",
            NO_MODEL,
            "--lora_weights",
            str(tmp_path / "lora-to-come"),
            "--output_dir",
            str(tmp_path / "generated"),
            "--dry_run",
        ]
    )
    result = plan(tmp_path / "generated")
    # 33 an identity: enough for Table V's 160,758 images after detection
    assert (result["identities"], result["images"], result["batches"]) == (4_940, 163_020, 40_755)
    assert result["unet_evaluations"] == 163_020 * 50 * 2  # classifier-free guidance: two UNet passes a step
    assert 150 < result["estimated_disk_gb"] < 300

    from vehicle_diff.generation.filter import main as filter_main

    args = ["--preset", "paper", "--generated", str(tmp_path / "generated"), "--detector", NO_MODEL, "--dry_run"]
    filter_main([*args, "--output_dir", str(tmp_path / "filtered")])  # images still to come: generate's plan
    assert (plan(tmp_path / "filtered")["images"], plan(tmp_path / "filtered")["batches"]) == (163_020, 10_189)

    from vehicle_diff.generation.select import main as select

    select(
        [
            *("--preset", "paper", "--prompts", str(library), "--output_dir", str(tmp_path / "select")),
            *("--candidates", "base", str(tmp_path / "lora-to-come"), "--dry_run"),
        ]
    )
    result = plan(tmp_path / "select")
    assert (result["images_per_candidate"], result["images"], result["unet_evaluations"]) == (20, 40, 4_000)


def test_filter_dry_run_reads_the_records_only(tmp_path):
    from vehicle_diff.generation.filter import main

    count = 148_200
    table = pa.table(
        {
            "image_id": [f"id-{i}" for i in range(count)],
            "identity": [f"v{i // 30}" for i in range(count)],
            "color": ["red"] * count,
            "file_name": [f"images/{i}.png" for i in range(count)],
            "width": [1024] * count,
            "height": [1024] * count,
        }
    )
    (tmp_path / "generated").mkdir()
    pq.write_table(table, tmp_path / "generated" / "records.parquet")
    main(
        [
            "--preset",
            "paper",
            "--generated",
            str(tmp_path / "generated"),
            "--detector",
            NO_MODEL,
            "--output_dir",
            str(tmp_path / "filtered"),
            "--dry_run",
        ]
    )
    result = plan(tmp_path / "filtered")
    assert (result["images"], result["batches"]) == (148_200, 9_263)


def test_reid_dry_run_trains_as_long_as_fast_reid_on_veri(veri_layout, tmp_path):
    from vehicle_diff.training.train_reid import main

    main(
        [
            "--preset",
            "paper",
            "--real_data",
            f"veri776:{veri_layout}",
            "--data_mode",
            "R",
            "--backbone",
            NO_MODEL,
            "--output_dir",
            str(tmp_path / "reid"),
            "--dry_run",
        ]
    )
    result = plan(tmp_path / "reid")
    assert (result["num_images"], result["num_identities"], result["batch_size"]) == (37_778, 576, 64)
    assert (result["steps_per_epoch"], result["total_steps"], result["warmup_steps"]) == (590, 35_400, 5_900)
    assert result["batch_share"] == {"real": 1.0, "synthetic": 0.0}


@pytest.fixture(scope="module")
def paper_export(tmp_path_factory):
    """An export the size of the paper's dataset, 149,472 images of 4,896 identities (2,592 with 31 images, the
    rest 30), every image in `train` as the paper preset exports it; the image cells are empty."""
    root = tmp_path_factory.mktemp("export") / "vehicle-diff"
    (root / "data").mkdir(parents=True)
    vehicle_ids = [identity for identity in range(4_896) for _ in range(31 if identity < 2_592 else 30)]
    image = pa.array([{"bytes": b"", "path": None}] * len(vehicle_ids))
    table = pa.table({"image": image, "vehicle_id": vehicle_ids, "camera": list(range(len(vehicle_ids)))})
    pq.write_table(table, root / "data" / "train-00000-of-00001.parquet")
    return root


@pytest.mark.parametrize(
    "mode, extra, images, identities, steps",
    [
        ("S", [], 149_472, 4_896, 140_100),  # 2,335 steps an epoch
        ("S", ["--max_synthetic_images", "45338"], 45_338, 4_896, 42_480),  # 708 an epoch
        ("D", [], 37_778 + 149_472, 576 + 4_896, 175_500),  # 2,925 an epoch
        ("B", [], 37_778 + 149_472, 576 + 4_896, 87_720),  # a real and a synthetic mini-batch: 1,462 an epoch
    ],
)
def test_reid_dry_run_plans_every_synthetic_image(
    paper_export, veri_layout, tmp_path, mode, extra, images, identities, steps
):
    """Every exported image trains, and the 45,338-image subsample of Table VI spreads over all 4,896 identities."""
    from vehicle_diff.training.train_reid import main

    real = ["--real_data" if mode != "S" else "--eval_data", f"veri776:{veri_layout}"]
    args = ["--preset", "paper", "--synthetic_data", str(paper_export), "--data_mode", mode, *real, *extra]
    main([*args, "--backbone", NO_MODEL, "--output_dir", str(tmp_path / "reid"), "--dry_run"])
    result = plan(tmp_path / "reid")
    assert (result["num_images"], result["num_identities"]) == (images, identities)
    batch = 128 if mode == "B" else 64
    assert result["batch_size"] == batch
    assert result["total_steps"] == steps == 60 * (images // batch) and result["warmup_steps"] == steps // 6


def test_a_whole_synthetic_export_needs_eval_data_before_any_training(paper_export, tmp_path):
    from vehicle_diff.training.train_reid import main

    from vehicle_diff.errors import UserInputError

    args = ["--preset", "paper", "--synthetic_data", str(paper_export), "--data_mode", "S", "--backbone", NO_MODEL]
    with pytest.raises(UserInputError, match="pass --eval_data"):
        main([*args, "--output_dir", str(tmp_path / "reid"), "--dry_run"])
