import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vehicle_diff.training.evaluate import main as evaluate
from vehicle_diff.training.reid_data import IdentityBatchSampler, parse_veri_name, read_source, read_veri776, relabel
from vehicle_diff.training.reid_model import ReIDModel
from vehicle_diff.training.train_reid import main

from tests.conftest import launch_two_processes, run_killed_at
from vehicle_diff.errors import UserInputError
from vehicle_diff.io import sha256_file


def test_veri_names_and_layout_errors(veri_folder, tmp_path):
    from pathlib import Path

    assert parse_veri_name(Path("0002_c003_00084390_0.jpg")) == (2, 3)
    with pytest.raises(UserInputError, match="not a VeRi-776 style name"):
        parse_veri_name(Path("car.jpg"))
    split = read_veri776(str(veri_folder))
    assert len(split.train) == 36 and {s.pid for s in split.train} == set(range(6))
    assert len(split.query) == 4 and len(split.gallery) == 16
    with pytest.raises(UserInputError, match="image_train: missing"):
        read_veri776(str(tmp_path))


def test_hf_dataset_splits(synthetic_dataset):
    split = read_source(str(synthetic_dataset))
    assert len(split.train) == 24 and len(split.query) == 3 and len(split.gallery) == 6


def test_relabel_offsets_synthetic_ids_past_real_ones():
    from vehicle_diff.training.reid_data import Sample

    samples = [Sample("a", 7, 0), Sample("b", 3, 0), Sample("c", 7, 1)]
    assert [s.pid for s in relabel(samples, offset=10)] == [10, 11, 10]


def sampler(mode, seed=0, epoch=0, rank=0, world=1):
    labels = [i // 3 for i in range(30)] + [10 + i // 2 for i in range(20)]  # 10 real ids x 3, 10 synthetic ids x 2
    sources = ["real"] * 30 + ["synthetic"] * 20
    s = IdentityBatchSampler(labels, sources, p=4, k=2, mode=mode, seed=seed, rank=rank, world=world)
    s.set_epoch(epoch)
    return s, labels, sources


@pytest.mark.parametrize("mode", ["R", "S", "D", "B"])
def test_identity_batches(mode):
    s, labels, sources = sampler(mode)
    batches = list(s)
    identities = 8 if mode == "B" else 4  # B: a real mini-batch of P identities merged with a synthetic one
    assert batches and all(len(b) == identities * 2 for b in batches)
    for batch in batches:
        ids = [labels[i] for i in batch]
        assert all(ids.count(pid) == 2 for pid in set(ids)) and len(set(ids)) == identities  # P x K
        kinds = [sources[i] for i in batch]
        if mode == "R":
            assert set(kinds) == {"real"}
        if mode == "S":
            assert set(kinds) == {"synthetic"}
        if mode == "B":
            assert kinds.count("real") == kinds.count("synthetic") == 8
    assert list(sampler(mode)[0]) == batches  # seeded
    assert list(sampler(mode, epoch=1)[0]) != batches  # another epoch, another order


def test_processes_take_disjoint_batches():
    whole = list(sampler("D")[0])
    first, second = list(sampler("D", rank=0, world=2)[0]), list(sampler("D", rank=1, world=2)[0])
    assert first + second and not {tuple(b) for b in first} & {tuple(b) for b in second}
    assert {tuple(b) for b in first + second} <= {tuple(b) for b in whole}


def tiny(*extra):
    return ["--preset", "tiny", *extra]


def test_train_on_synthetic_then_evaluate(synthetic_dataset, tiny_zoo, tmp_path):
    out = main(
        tiny("--synthetic_data", str(synthetic_dataset), "--data_mode", "S", "--output_dir", str(tmp_path / "reid"))
    )
    model = ReIDModel.from_pretrained(out)  # one call, no backbone download
    assert model.head.classifier.out_features == 8
    history = json.loads((out / "metrics.json").read_text())
    assert history and 0 <= history[-1]["plain"]["mAP"] <= 1
    card = (out / "README.md").read_text()
    assert "model-index" in card and "mAP" in card
    result = evaluate(
        [
            "--preset",
            "tiny",
            "--model",
            str(out),
            "--eval_data",
            str(synthetic_dataset),
            "--rerank",
            "--output_dir",
            str(tmp_path / "eval"),
        ]
    )
    metrics = json.loads((result / "metrics.json").read_text())
    assert set(metrics) >= {"plain", "reranked", "data"} and (result / "retrieval.png").is_file()


def test_balanced_real_and_synthetic(veri_folder, synthetic_dataset, tiny_zoo, tmp_path):
    flags = tiny(
        "--real_data",
        f"veri776:{veri_folder}",
        "--synthetic_data",
        str(synthetic_dataset),
        "--data_mode",
        "B",
        "--max_train_steps",
        "4",
        "--eval_every_epochs",
        "100",
    )
    out = main([*flags, "--output_dir", str(tmp_path / "straight")])
    model = ReIDModel.from_pretrained(out)
    assert model.head.classifier.out_features == 6 + 8  # real ids, then synthetic ids after them
    history = json.loads((out / "metrics.json").read_text())
    assert "VeRi-776" in history[-1]["data"]


def test_two_processes_train_with_ddp_on_gloo(synthetic_dataset, tiny_zoo, tmp_path):
    flags = tiny(
        "--synthetic_data",
        str(synthetic_dataset),
        "--data_mode",
        "S",
        "--ids_per_batch",
        "2",
        "--max_train_steps",
        "2",
        "--output_dir",
        str(tmp_path / "reid"),
    )
    result = launch_two_processes("vehicle_diff.training.train_reid", flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "reid" / "training_stats.json").read_text())["steps"] == 2


def test_bad_input(tmp_path, synthetic_dataset):
    with pytest.raises(UserInputError, match="--data_mode B needs --real_data"):
        main(tiny("--synthetic_data", str(synthetic_dataset), "--output_dir", str(tmp_path / "r")))
    with pytest.raises(UserInputError, match="--images_per_id must be >= 2"):
        main(
            tiny(
                "--synthetic_data", "x", "--data_mode", "S", "--images_per_id", "1", "--output_dir", str(tmp_path / "r")
            )
        )
    with pytest.raises(UserInputError, match="image_train: missing"):
        main(tiny("--real_data", f"veri776:{tmp_path}", "--data_mode", "R", "--output_dir", str(tmp_path / "r")))


def train_reid_command(synthetic_dataset, out_dir, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vehicle_diff.training.train_reid",
        *tiny("--synthetic_data", str(synthetic_dataset), "--data_mode", "S", "--output_dir", str(out_dir), *extra),
    ]


def test_killed_twice_the_same_command_resumes_to_the_uninterrupted_result(synthetic_dataset, tiny_zoo, tmp_path):
    """3 steps an epoch, 4 in all, a checkpoint every 2: the first kill lands mid-epoch, the second after the
    checkpoint of the last step (taken after its evaluation), which must not be trained again."""
    flags = ["--max_train_steps", "4", "--checkpointing_steps", "2"]
    subprocess.run(
        train_reid_command(synthetic_dataset, tmp_path / "straight", *flags), check=True, capture_output=True
    )
    command = train_reid_command(synthetic_dataset, tmp_path / "resumed", *flags)
    run_killed_at(command, "checkpoint.committed")  # right after checkpoint-2
    run_killed_at(command, "checkpoint.committed")  # resumed from 2, killed right after checkpoint-4
    subprocess.run(command, check=True, capture_output=True)

    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert sha256_file(b / "model.safetensors") == sha256_file(a / "model.safetensors")
    metrics = json.loads((b / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics == json.loads((a / "metrics.json").read_text())
    stats = [json.loads((out / "training_stats.json").read_text()) for out in (a, b)]
    for key in ("steps", "num_classes", "real_images", "synthetic_images"):
        assert stats[0][key] == stats[1][key]
    assert stats[1]["steps"] == 4
    assert sha256_file(b / "training_curves.png") == sha256_file(a / "training_curves.png")
    card = (b / "README.md").read_text()
    assert card == (a / "README.md").read_text() and "Not evaluated" not in card
    resumed_from = json.loads((b / "done.json").read_text())["summary"]["resumed_from"]
    assert [(Path(r["checkpoint"]).name, r["step"]) for r in resumed_from] == [("checkpoint-2", 2), ("checkpoint-4", 4)]


def test_a_checkpoint_of_another_architecture_is_refused_in_one_line(synthetic_dataset, tiny_zoo, tmp_path):
    flags = ["--max_train_steps", "2", "--checkpointing_steps", "2"]
    subprocess.run(train_reid_command(synthetic_dataset, tmp_path / "resnet", *flags), check=True, capture_output=True)
    checkpoint = tmp_path / "resnet" / "checkpoint-2"
    other = ["--backbone", "tiny:timm-densenet", "--resume_from_checkpoint", str(checkpoint)]
    result = subprocess.run(
        train_reid_command(synthetic_dataset, tmp_path / "densenet", *flags, *other), capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(checkpoint) in lines[0] and "another training plan" in lines[0]
    assert "backbone" in lines[0]


def test_the_ide_baseline_trains_and_reloads(synthetic_dataset, tiny_zoo, tmp_path):
    """Table II's baseline rows: cross-entropy only, no BN-neck, random batches, no auxiliary head."""
    ide = ["--circle_loss", "false", "--bn_neck", "false", "--sampler", "random", "--aux_head", "false"]
    args = tiny("--synthetic_data", str(synthetic_dataset), "--data_mode", "S", *ide, "--max_train_steps", "2")
    out = main([*args, "--output_dir", str(tmp_path / "ide")])
    model = ReIDModel.from_pretrained(out)
    assert isinstance(model.head.neck, torch.nn.Identity) and model.aux_head is None
    with pytest.raises(UserInputError, match="balances identities"):
        main(tiny("--real_data", "x", "--synthetic_data", "y", "--data_mode", "B", "--sampler", "random"))


def test_loader_workers_do_not_change_what_is_learned(synthetic_dataset, tiny_zoo, tmp_path):
    """Augmentation is drawn from (seed, epoch, image) alone, so the worker count changes the speed only."""
    import torch

    weights = []
    for workers in ("0", "2"):
        flags = ("--synthetic_data", str(synthetic_dataset), "--data_mode", "S", "--max_train_steps", "2")
        out = main(tiny(*flags, "--dataloader_num_workers", workers, "--output_dir", str(tmp_path / workers)))
        weights.append(ReIDModel.from_pretrained(out).state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
