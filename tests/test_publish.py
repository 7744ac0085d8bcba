"""Publishing to a local mirror and reading it back through olah with the real clients."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from vehicle_diff.errors import UserInputError
from vehicle_diff.publish import main, mirror_client_env, serve_mirror


@pytest.fixture(scope="module")
def tiny_reid(synthetic_dataset, tiny_zoo, tmp_path_factory):
    from training.train_reid import main as train

    return train(["--preset", "tiny", "--synthetic_data", str(synthetic_dataset), "--data_mode", "S", "--max_train_steps", "2",
                  "--output_dir", str(tmp_path_factory.mktemp("reid") / "reid")])  # fmt: skip


@pytest.fixture(scope="module")
def second_dataset(tiny_filtered, tmp_path_factory):
    """Another version: no held-out identities and the colors in another order (other ClassLabel names)."""
    from vehicle_diff_dataset import main as export

    colors = ["black", "brown", "golden", "white", "blue", "red", "gray", "green", "orange", "yellow"]
    return export(["--preset", "tiny", "--filtered", str(tiny_filtered), "--eval_fraction", "0", "--colors", *colors,
                   "--output_dir", str(tmp_path_factory.mktemp("dataset2") / "vehicle-diff")])  # fmt: skip


@pytest.fixture(scope="module")
def mirror(tiny_dataset, second_dataset, tiny_lora, tiny_reid, tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    common = ["--preset", "tiny", "--mirror_dir", str(root / "repos"), "--output_dir", str(root / "report")]
    main(
        [
            *common,
            "--dataset",
            str(tiny_dataset),
            "--lora",
            str(tiny_lora),
            "--reid",
            str(tiny_reid),
            "--version",
            "v1.0",
        ]
    )
    main([*common, "--dataset", str(second_dataset), "--version", "v2.0"])
    return root / "repos"


@pytest.fixture(scope="module")
def olah(mirror, tmp_path_factory):
    """olah serving the mirror offline on 127.0.0.1, started and stopped here."""
    with serve_mirror(mirror, tmp_path_factory.mktemp("olah")) as endpoint:
        yield endpoint


def test_round_trip_through_olah_with_the_real_clients(olah, tiny_zoo, tmp_path):
    script = textwrap.dedent("""
        import json, datasets, torch
        from huggingface_hub import snapshot_download
        from training.reid_model import ReIDModel
        from vehicle_diff.models import load_sdxl_pipeline

        out = {}
        for version in ("v1.0", "v2.0"):
            ds = datasets.load_dataset("vehicle-diff/vehicle-diff", revision=version)
            out[version] = {"splits": {k: len(v) for k, v in ds.items()}, "colors": ds["train"].features["color"].names}
        out["lora_files"] = sorted(__import__("os").listdir(snapshot_download("vehicle-diff/vehicle-diff-sdxl-lora", revision="v1.0")))
        pipe = load_sdxl_pipeline("tiny:sdxl")
        pipe.load_lora_weights("vehicle-diff/vehicle-diff-sdxl-lora", weight_name="pytorch_lora_weights.safetensors", revision="v1.0")
        out["lora_adapters"] = pipe.get_list_adapters()
        model = ReIDModel.from_pretrained("vehicle-diff/vehicle-diff-reid", revision="v1.0").eval()
        out["reid_features"] = list(model.extract(torch.zeros(1, 3, 64, 64)).shape)
        print("RESULT" + json.dumps(out))
    """)
    env = mirror_client_env(olah, tmp_path / "hf")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split("RESULT", 1)[1])
    assert set(out["v1.0"]["splits"]) == {"train", "query", "gallery"} and set(out["v2.0"]["splits"]) == {"train"}
    assert sum(out["v1.0"]["splits"].values()) == out["v2.0"]["splits"]["train"]
    assert out["v1.0"]["colors"][0] == "yellow" and out["v2.0"]["colors"][0] == "black"
    assert "pytorch_lora_weights.safetensors" in out["lora_files"] and "publish.json" in out["lora_files"]
    assert out["lora_adapters"]["unet"]
    assert out["reid_features"][0] == 1


def test_publishing_again_changes_nothing_and_versions_are_protected(mirror, tiny_dataset, second_dataset, tmp_path):
    import subprocess as sp

    repo = mirror / "datasets" / "vehicle-diff" / "vehicle-diff"
    log = lambda: sp.run(["git", "-C", str(repo), "log", "--oneline", "--all"], capture_output=True, text=True).stdout  # noqa: E731
    before = log()
    common = ["--preset", "tiny", "--mirror_dir", str(mirror), "--output_dir", str(tmp_path / "report")]
    report = main([*common, "--dataset", str(tiny_dataset), "--version", "v1.0"])
    assert "already published, unchanged" in report[0] and log() == before
    with pytest.raises(UserInputError, match="version v1.0 exists with other content"):
        main([*common, "--dataset", str(second_dataset), "--version", "v1.0"])
    assert log() == before


def test_an_interrupted_publish_finishes_on_rerun(tiny_dataset, tmp_path, monkeypatch):
    import vehicle_diff.publish as publish

    real_git = publish.git

    def git_dies_at_tag(repo, *args):
        if args[0] == "tag" and args[1] != "--list":
            raise KeyboardInterrupt
        return real_git(repo, *args)

    common = [
        "--preset",
        "tiny",
        "--dataset",
        str(tiny_dataset),
        "--mirror_dir",
        str(tmp_path / "m"),
        "--output_dir",
        str(tmp_path / "r"),
    ]
    monkeypatch.setattr(publish, "git", git_dies_at_tag)
    with pytest.raises(KeyboardInterrupt):
        main(common)
    monkeypatch.setattr(publish, "git", real_git)
    assert "published to" in main(common)[0]
    assert "already published" in main(common)[0]


def test_force_moves_a_version_and_hub_needs_a_token(tiny_dataset, second_dataset, tmp_path, monkeypatch):
    common = [
        "--preset",
        "tiny",
        "--mirror_dir",
        str(tmp_path / "m"),
        "--output_dir",
        str(tmp_path / "r"),
        "--version",
        "v1.0",
    ]
    main([*common, "--dataset", str(tiny_dataset)])
    assert "published to" in main([*common, "--dataset", str(second_dataset), "--force"])[0]
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-token-home"))
    with pytest.raises(UserInputError, match="no Hugging Face token"):
        main(
            ["--preset", "tiny", "--target", "hub", "--dataset", str(tiny_dataset), "--output_dir", str(tmp_path / "r")]
        )
    with pytest.raises(UserInputError, match="data/ is missing"):
        main(
            [
                "--preset",
                "tiny",
                "--dataset",
                str(tmp_path),
                "--mirror_dir",
                str(tmp_path / "m"),
                "--output_dir",
                str(tmp_path / "r"),
            ]
        )


@pytest.fixture
def fake_hub():
    from tests.hub_server import serve

    hub, server, endpoint = serve()
    yield hub, endpoint
    server.shutdown()


def publish_to_fake_hub(endpoint, tmp_path, *flags):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_test", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
    command = [sys.executable, "-m", "vehicle_diff.cli", "publish", "--preset", "tiny", "--target", "hub", "--hub_endpoint", endpoint,
               "--output_dir", str(tmp_path / "report"), *flags]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_hub_api_path_against_an_hf_compatible_server(
    fake_hub, tiny_dataset, second_dataset, tiny_lora, tiny_reid, tmp_path
):
    hub, endpoint = fake_hub
    first = publish_to_fake_hub(
        endpoint, tmp_path, "--dataset", str(tiny_dataset), "--lora", str(tiny_lora), "--reid", str(tiny_reid)
    )
    assert first.returncode == 0, first.stderr[-3000:]
    oid, files = hub.files("datasets", "vehicle-diff/vehicle-diff", "v1.0")
    assert "README.md" in files and any(name.startswith("data/train-") for name in files) and "publish.json" in files
    assert (tiny_dataset / "README.md").read_bytes() == files["README.md"]
    _, lora_files = hub.files("models", "vehicle-diff/vehicle-diff-sdxl-lora", "v1.0")
    assert (tiny_lora / "pytorch_lora_weights.safetensors").read_bytes() == lora_files[
        "pytorch_lora_weights.safetensors"
    ]
    assert "model.safetensors" in hub.files("models", "vehicle-diff/vehicle-diff-reid", "v1.0")[1]

    commits = len(hub.repo("datasets", "vehicle-diff/vehicle-diff")["commits"])
    again = publish_to_fake_hub(endpoint, tmp_path, "--dataset", str(tiny_dataset))
    assert again.returncode == 0 and "already published, unchanged" in again.stdout
    assert len(hub.repo("datasets", "vehicle-diff/vehicle-diff")["commits"]) == commits  # nothing pushed

    refused = publish_to_fake_hub(endpoint, tmp_path, "--dataset", str(second_dataset))
    assert refused.returncode == 2 and "exists with other content" in refused.stderr
    moved = publish_to_fake_hub(endpoint, tmp_path, "--dataset", str(second_dataset), "--force")
    assert moved.returncode == 0, moved.stderr[-2000:]
    new_oid, new_files = hub.files("datasets", "vehicle-diff/vehicle-diff", "v1.0")
    assert new_oid != oid and not any(name.startswith("data/query-") for name in new_files)  # stale shards deleted


@pytest.mark.skipif(
    not os.environ.get("VEHICLE_DIFF_LIVE_HUB_NAMESPACE"),
    reason="opt-in: set VEHICLE_DIFF_LIVE_HUB_NAMESPACE and HF_TOKEN",
)
def test_live_hub_publish(tiny_dataset, tmp_path):
    """Publishes the tiny dataset as a private repo under a namespace you own, twice, and reads it back."""
    import time as clock

    namespace, version = os.environ["VEHICLE_DIFF_LIVE_HUB_NAMESPACE"], f"test-{int(clock.time())}"
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "vehicle_diff.cli", "publish", "--preset", "tiny", "--target", "hub", "--private",
               "--namespace", namespace, "--dataset_repo", "vehicle-diff-test", "--dataset", str(tiny_dataset),
               "--version", version, "--output_dir", str(tmp_path / "r")]  # fmt: skip
    assert subprocess.run(command, env=env, capture_output=True, text=True).returncode == 0
    again = subprocess.run(command, env=env, capture_output=True, text=True)
    assert "already published, unchanged" in again.stdout
    script = f"import datasets; print(len(datasets.load_dataset('{namespace}/vehicle-diff-test', revision='{version}')['train']))"
    assert (
        int(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True).stdout.split()[-1])
        > 0
    )
