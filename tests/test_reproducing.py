"""REPRODUCING.md runs: every command in its code blocks, exactly as written plus `--dry_run`, on paper-sized
inputs made of empty files, and every `# plan:` number in the file is what that command's plan says."""

import importlib
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

DOC = Path(__file__).resolve().parents[1] / "REPRODUCING.md"
KEPT, IDENTITIES = 149_472, 4_896  # the paper's dataset (§IV-A): what the filter outputs here keep


def documented_commands() -> list[tuple[list[str], dict[str, int | str]]]:
    """(argv after `vehicle-diff`, the `# plan:` numbers) of every command in the file's bash blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command, _, comment = line.partition("  # ")
            if not command.strip():
                continue
            argv = shlex.split(command)
            assert argv[0] == "vehicle-diff", line
            expected = {}
            if comment.startswith("plan: "):
                for item in comment.removeprefix("plan: ").split(", "):
                    key, value = item.rsplit(" ", 1)
                    number = value.replace(",", "")
                    expected[key] = int(number) if number.isdigit() else value
            commands.append((argv[1:], expected))
    return commands


def touch_all(folder: Path, names) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(names)
    for name in names:
        (folder / name).touch()
    return names


def fake_benchmarks(data: Path) -> None:
    """VeRi-776 and CityFlowV2 as released (file names and counts), with the CityFlowV2 test labels of the public
    offline evaluation; every image is an empty file."""
    veri = data / "VeRi"
    touch_all(veri / "image_train", (f"{1 + i % 576:04d}_c{1 + i % 20:03d}_{i:08d}_0.jpg" for i in range(37_778)))
    touch_all(veri / "image_query", (f"{1 + i % 200:04d}_c001_{i:08d}_0.jpg" for i in range(1_678)))
    touch_all(veri / "image_test", (f"{1 + i % 200:04d}_c002_{i:08d}_0.jpg" for i in range(11_579)))
    city = data / "CityFlowV2"
    train = touch_all(city / "image_train", (f"{i + 1:06d}.jpg" for i in range(52_717)))
    items = "".join(
        f'<Item imageName="{n}" vehicleID="{1 + i % 440:04d}" cameraID="c{1 + i % 46:03d}" />'
        for i, n in enumerate(train)
    )
    (city / "train_label.xml").write_text(f"<TrainingImages><Items>{items}</Items></TrainingImages>")
    for part, count, labels in (("query", 1_052, "query_annotation.npy"), ("test", 18_290, "gallery_annotation.npy")):
        names = touch_all(city / f"image_{part}", (f"{i + 1:06d}.jpg" for i in range(count)))
        (city / f"name_{part}.txt").write_text("\n".join(names) + "\n")
        np.save(city / labels, np.stack([np.arange(count) % 46 + 1, np.arange(count) % 333 + 1], axis=1))


def planned(folder: Path, key: str, default: int) -> int:
    plan = folder / "plan.json"
    return json.loads(plan.read_text()).get(key, default) if plan.is_file() else default


def paper_identities(count: int, identities: int) -> list[int]:
    per = [count // identities + (i < count % identities) for i in range(identities)]
    return [identity for identity, n in enumerate(per) for _ in range(n)]


def provide_inputs(argv: list[str], root: Path) -> None:
    """What a stage reads and an earlier stage would have written, made when missing, as large as the earlier
    stage's dry-run plan says (the filter's keep count is the paper's: it is known only after filtering). The
    filter plans from generate's plan alone."""
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    if "--prompts" in flags and not (root / flags["--prompts"] / "prompts.parquet").is_file():
        from vehicle_diff.generation.prompts import main as prompts

        prompts(["--preset", "paper", "--output_dir", str(root / flags["--prompts"])])
    if "--train_data_dir" in flags:
        captions = root / flags["--train_data_dir"]
        lines = (
            json.dumps({"file_name": f"{i}.jpg", "text": "a car"}) + "\n"
            for i in range(planned(captions, "selected", 378))
        )
        (captions / "train").mkdir(parents=True, exist_ok=True)
        (captions / "train" / "metadata.jsonl").write_text("".join(lines))
    for flag in ("--filtered", "--generated_images"):
        filtered = root / flags.get(flag, "-")
        if flag in flags and not (filtered / "records.parquet").is_file() and str(flags[flag]).startswith("out/"):
            count = planned(filtered, "images", 163_020)
            kept = paper_identities(KEPT, IDENTITIES)
            identities = [f"v{i}" for i in kept] + [f"rejected{i % 44}" for i in range(count - KEPT)]
            table = pa.table(
                {
                    "image_id": [f"id-{i}" for i in range(count)],
                    "identity": identities,
                    "vehicle_id": kept + [IDENTITIES + i % 44 for i in range(count - KEPT)],
                    "color": ["red"] * count,
                    "kept": [i < KEPT for i in range(count)],
                    "crop_file": [f"crops/{i}.png" for i in range(count)],
                }
            )
            filtered.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, filtered / "records.parquet")
    if "--synthetic_data" in flags and not (root / flags["--synthetic_data"] / "data").is_dir():
        export = root / flags["--synthetic_data"]
        vehicle_ids = paper_identities(
            planned(export, "train_images", KEPT), planned(export, "train_identities", IDENTITIES)
        )
        (export / "data").mkdir(parents=True)
        image = pa.array([{"bytes": b"", "path": None}] * len(vehicle_ids))
        table = pa.table({"image": image, "vehicle_id": vehicle_ids, "camera": list(range(len(vehicle_ids)))})
        pq.write_table(table, export / "data" / "train-00000-of-00001.parquet")


def test_every_command_of_reproducing_runs_as_a_dry_run_and_its_counts_are_the_plans(tmp_path, monkeypatch):
    from vehicle_diff.cli import STAGES

    commands = documented_commands()
    stages = {argv[0] for argv, _ in commands}
    assert {"prompts", "caption", "finetune", "select", "generate", "filter", "export", "train-reid"} <= stages
    assert {"evaluate", "fid"} <= stages and len(commands) >= 25
    fake_benchmarks(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    for argv, expected in commands:
        argv = [arg.replace("/data/", f"{tmp_path}/data/") for arg in argv]
        provide_inputs(argv, tmp_path)
        stage, *args = argv
        out = importlib.import_module(STAGES[stage][0]).main([*args, "--dry_run"])
        result = json.loads((Path(out) / "plan.json").read_text())
        assert {key: result.get(key) for key in expected} == expected, " ".join(argv)


@pytest.mark.parametrize("path", ["README.md", "REPRODUCING.md"])
def test_the_docs_point_fid_at_datasets_not_at_every_crop(path):
    text = (DOC.parent / path).read_text()
    assert "filtered/crops" not in text
