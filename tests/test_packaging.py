"""The installed distribution has one import namespace, so a user's own `training/` or `generation/` folder never
shadows ours (nor ours theirs)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_holds_only_the_vehicle_diff_names(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build writes nothing into the repository
    for name in ("vehicle_diff", "training", "generation", "cards"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "vehicle_diff_dataset.py"):
        shutil.copy(REPO_ROOT / name, source / name)
    build = subprocess.run(
        [sys.executable, "-c", f"import setuptools.build_meta as b; print(b.build_wheel({str(tmp_path)!r}))"],
        cwd=source,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = tmp_path / build.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"vehicle_diff", "vehicle_diff_dataset.py"}
    for module in ("vehicle_diff/training/train_reid.py", "vehicle_diff/generation/filter.py"):
        assert module in names
    assert "vehicle_diff/cards/reid_card.md" in names and "vehicle_diff/presets/paper.yaml" in names


def test_the_cli_works_beside_a_users_own_training_and_generation_packages(tmp_path):
    for name in ("training", "generation", "cards"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('the user package was imported')\n")
    for command in (
        [sys.executable, "-m", "vehicle_diff.cli", "prompts", "--help"],
        [sys.executable, "-m", "vehicle_diff.training.train_reid", "--help"],
        [sys.executable, "-c", "import vehicle_diff.generation.filter, vehicle_diff.cards, vehicle_diff_dataset"],
    ):
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, (command, result.stderr[-2000:])
