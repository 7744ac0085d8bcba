"""Publishing to a local mirror and the Hub API, read back with the real clients; faults, hostile input, cards."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import vehicle_diff.publish as publish
from vehicle_diff.errors import UserInputError
from vehicle_diff.publish import main, mirror_client_env, serve_mirror

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXT = (".md", ".json", ".yaml", ".yml", ".txt")


def python_env(base: dict | None = None, **extra) -> dict:
    """The environment `base` (default: ours) for a child Python that imports this checkout from any directory."""
    base = dict(os.environ if base is None else base)
    path = os.pathsep.join(p for p in (str(REPO_ROOT), base.get("PYTHONPATH")) if p)
    return {**base, "PYTHONPATH": path, **extra}


def card_header(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def code_block(card: str) -> str:
    return card.split("```python\n", 1)[1].split("```", 1)[0]


def git_out(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def trained_lora(tiny_captions, tmp_path_factory):
    """A LoRA from the finetune stage (card, context, validation grid), two steps long."""
    from vehicle_diff.training.finetune_lora import main as finetune

    return finetune(
        [
            "--preset",
            "tiny",
            "--train_data_dir",
            str(tiny_captions),
            "--max_train_steps",
            "2",
            "--validation_inference_steps",
            "2",
            "--output_dir",
            str(tmp_path_factory.mktemp("lora") / "lora"),
        ]
    )


@pytest.fixture(scope="module")
def tiny_reid(tiny_dataset, tiny_zoo, tmp_path_factory):
    """A re-ID model trained (two steps) and evaluated on the exported tiny dataset."""
    from vehicle_diff.training.train_reid import main as train

    return train(
        [
            "--preset",
            "tiny",
            "--synthetic_data",
            str(tiny_dataset),
            "--data_mode",
            "S",
            "--max_train_steps",
            "2",
            "--output_dir",
            str(tmp_path_factory.mktemp("reid") / "reid"),
        ]
    )


@pytest.fixture(scope="module")
def second_dataset(tiny_filtered, tmp_path_factory):
    """Another version: no held-out identities and the colors in another order (other ClassLabel names)."""
    from vehicle_diff_dataset import main as export

    colors = ["black", "brown", "golden", "white", "blue", "red", "gray", "green", "orange", "yellow"]
    return export(
        [
            "--preset",
            "tiny",
            "--filtered",
            str(tiny_filtered),
            "--eval_fraction",
            "0",
            "--colors",
            *colors,
            "--output_dir",
            str(tmp_path_factory.mktemp("dataset2") / "vehicle-diff"),
        ]
    )


@pytest.fixture(scope="module")
def mirror(tiny_dataset, second_dataset, trained_lora, tiny_reid, tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    common = ["--preset", "tiny", "--mirror_dir", str(root / "repos"), "--output_dir", str(root / "report")]
    main(
        [
            *common,
            "--dataset",
            str(tiny_dataset),
            "--lora",
            str(trained_lora),
            "--reid",
            str(tiny_reid),
            "--version",
            "v1.0",
        ]
    )
    main([*common, "--dataset", str(second_dataset), "--version", "v2.0", "--output_dir", str(root / "report-v2")])
    return root / "repos"


@pytest.fixture(scope="module")
def olah(mirror, tmp_path_factory):
    """olah serving the mirror offline on 127.0.0.1, started and stopped here."""
    with serve_mirror(mirror, tmp_path_factory.mktemp("olah")) as endpoint:
        yield endpoint


def test_round_trip_through_olah_with_the_real_clients_and_the_cards_snippets(
    olah, mirror, tiny_zoo, tmp_path, monkeypatch
):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):  # an air-gapped user's shell
        monkeypatch.setenv(name, "1")
    script = textwrap.dedent("""
        import json, os, sys
        import datasets
        from huggingface_hub import hf_hub_download, snapshot_download
        from vehicle_diff.models import resolved_revision

        out = {}
        for version in ("v1.0", "v2.0"):
            ds = datasets.load_dataset("vehicle-diff/vehicle-diff", revision=version)
            out[version] = {"splits": {k: len(v) for k, v in ds.items()}, "colors": ds["train"].features["color"].names}
        out["lora_files"] = sorted(os.listdir(snapshot_download("vehicle-diff/vehicle-diff-sdxl-lora", revision="v1.0")))
        out["reid_files"] = sorted(os.listdir(snapshot_download("vehicle-diff/vehicle-diff-reid", revision="v1.0")))
        cards = {repo: open(hf_hub_download(repo, "README.md", revision="v1.0")).read()
                 for repo in ("vehicle-diff/vehicle-diff-sdxl-lora", "vehicle-diff/vehicle-diff-reid")}
        os.chdir(sys.argv[1])  # the cards' snippets, run as written
        namespace = {}
        exec(cards["vehicle-diff/vehicle-diff-sdxl-lora"].split("```python\\n", 1)[1].split("```", 1)[0], namespace)
        out["lora_adapters"] = namespace["pipe"].get_list_adapters()
        out["lora_image"] = os.path.getsize("vehicle.png")
        namespace = {}
        exec(cards["vehicle-diff/vehicle-diff-reid"].split("```python\\n", 1)[1].split("```", 1)[0], namespace)
        out["reid_features"] = list(namespace["features"].shape)
        out["timm_model"] = type(namespace["model"]).__name__
        import torch
        from vehicle_diff.training.reid_model import ReIDModel
        reid = ReIDModel.from_pretrained("vehicle-diff/vehicle-diff-reid", revision="v1.0")
        expected = reid.extract(namespace["batch"])  # the tiny preset evaluates without flip
        out["reid_cosine"] = torch.nn.functional.cosine_similarity(namespace["features"], expected).min().item()
        dataset_card = open(hf_hub_download("vehicle-diff/vehicle-diff", "README.md", repo_type="dataset",
                                            revision="v1.0")).read()
        out["mirror_card_streams"] = "streaming=True" in dataset_card
        out["mirror_card_names_olah"] = "olah" in dataset_card
        out["reid_revision"] = resolved_revision("vehicle-diff/vehicle-diff-reid", "v1.0")
        print("RESULT" + json.dumps(out))
    """)
    env = python_env(mirror_client_env(olah, tmp_path / "hf"))
    assert not {"HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"} & set(env)
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split("RESULT", 1)[1])
    assert set(out["v1.0"]["splits"]) == {"train", "query", "gallery"} and set(out["v2.0"]["splits"]) == {"train"}
    assert sum(out["v1.0"]["splits"].values()) == out["v2.0"]["splits"]["train"]
    assert out["v1.0"]["colors"][0] == "yellow" and out["v2.0"]["colors"][0] == "black"
    assert {
        "pytorch_lora_weights.safetensors",
        "pytorch_lora_weights_kohya.safetensors",
        "publish.json",
        "README.md",
        "validation.png",
    } <= set(out["lora_files"])
    assert {"config.json", "model.safetensors", "reid_heads.safetensors", "README.md"} <= set(out["reid_files"])
    assert out["lora_adapters"]["unet"] and out["lora_image"] > 0
    assert out["reid_features"][0] == 1 and out["timm_model"] == "ResNet"
    assert out["reid_cosine"] >= 0.9999  # timm's one call gives the features the card's metrics come from
    assert out["mirror_card_names_olah"] and not out["mirror_card_streams"]  # olah cannot serve streaming
    tag_commit = git_out(mirror / "models" / "vehicle-diff" / "vehicle-diff-reid", "rev-parse", "v1.0")
    assert out["reid_revision"] == tag_commit
    # offline here, from the cache the child filled: the same commit
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    from vehicle_diff.models import resolved_revision

    assert resolved_revision("vehicle-diff/vehicle-diff-reid", "v1.0") == tag_commit


def test_read_back_through_olah_ignores_the_users_offline_switches(mirror, tmp_path, monkeypatch):
    from vehicle_diff.pipeline import read_back_through_olah

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    result = read_back_through_olah(mirror, "vehicle-diff/vehicle-diff", "v2.0", tmp_path)
    assert set(result["splits"]) == {"train"} and result["endpoint"].startswith("http://127.0.0.1:")


def test_published_files_hold_no_machine_paths_and_the_manifest_matches(mirror, tmp_path):
    local = {"/tmp/", str(Path.home()) + "/", os.getcwd() + "/", str(tmp_path.parent.parent) + "/"}
    repos = [
        mirror / "datasets" / "vehicle-diff" / "vehicle-diff",
        mirror / "models" / "vehicle-diff" / "vehicle-diff-sdxl-lora",
        mirror / "models" / "vehicle-diff" / "vehicle-diff-reid",
    ]
    for repo in repos:
        names = git_out(repo, "ls-tree", "-r", "--name-only", "v1.0").splitlines()
        manifest = json.loads(git_out(repo, "show", "v1.0:publish.json"))
        assert set(manifest["files"]) == set(names) - {"publish.json"} and manifest["version"] == "v1.0"
        for name in names:
            if name.endswith(TEXT):
                text = git_out(repo, "show", f"v1.0:{name}")
                assert not [p for p in local if p in text], (repo.name, name)
    lora_config = yaml.safe_load(git_out(repos[1], "show", "v1.0:config.yaml"))["config"]
    assert lora_config["output_dir"] == "lora" and lora_config["train_data_dir"] == "captions"


def test_public_path_reduces_local_paths_only():
    assert publish.public_path("/data/out/lora") == "lora"
    assert publish.public_path("veri776:/data/VeRi") == "veri776:VeRi"
    assert publish.public_path("local-dir:/models/resnet") == "local-dir:resnet"
    for kept in (
        "https://huggingface.co/x/y",
        "tiny:sdxl",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "out/lora",
        "a red car",
        "hf-hub:timm/resnet50.tv_in1k",
    ):
        assert publish.public_path(kept) == kept
    assert publish.scrub_paths({"a": ["/x/y", {"b": "~/z"}], "n": 3}) == {"a": ["y", {"b": "z"}], "n": 3}


def test_publishing_again_changes_nothing_and_versions_are_protected(mirror, tiny_dataset, second_dataset, tmp_path):
    repo = mirror / "datasets" / "vehicle-diff" / "vehicle-diff"
    before = git_out(repo, "log", "--oneline", "--all")
    common = ["--preset", "tiny", "--mirror_dir", str(mirror), "--output_dir", str(tmp_path / "report")]
    report = main([*common, "--dataset", str(tiny_dataset), "--version", "v1.0"])
    assert "already published, unchanged" in report[0] and git_out(repo, "log", "--oneline", "--all") == before
    with pytest.raises(UserInputError, match="version v1.0 exists with other content"):
        main([*common, "--dataset", str(second_dataset), "--version", "v1.0", "--output_dir", str(tmp_path / "r2")])
    assert git_out(repo, "log", "--oneline", "--all") == before
    assert git_out(repo, "status", "--porcelain") == ""  # the checkout shows main


def dataset_args(dataset, tmp_path, *extra):
    return [
        "--preset",
        "tiny",
        "--dataset",
        str(dataset),
        "--mirror_dir",
        str(tmp_path / "m"),
        "--output_dir",
        str(tmp_path / "r"),
        *extra,
    ]


def test_ctrl_c_while_tagging_then_a_rerun_finishes(tiny_dataset, tmp_path, monkeypatch):
    real_git = publish.git

    def git_interrupted_at_the_tag(repo, *args, **kwargs):
        if args[0] == "update-ref" and "refs/tags/" in " ".join(args):
            raise KeyboardInterrupt
        return real_git(repo, *args, **kwargs)

    monkeypatch.setattr(publish, "git", git_interrupted_at_the_tag)
    with pytest.raises(KeyboardInterrupt):
        main(dataset_args(tiny_dataset, tmp_path))
    monkeypatch.setattr(publish, "git", real_git)
    repo = tmp_path / "m" / "datasets" / "vehicle-diff" / "vehicle-diff"
    committed = git_out(repo, "rev-parse", "main")
    assert "published to" in main(dataset_args(tiny_dataset, tmp_path))[0]
    assert git_out(repo, "rev-parse", "v1.0") == committed  # the commit made before the interrupt is tagged
    assert "already published" in main(dataset_args(tiny_dataset, tmp_path))[0]


def test_a_publish_sigkilled_at_any_step_finishes_on_rerun(tiny_dataset, tiny_reid, tmp_path):
    """SIGKILL at every named step of both repos (objects written, committed, tagged), and at random moments (in git
    too), then a plain re-run: the repos end exactly as after an uninterrupted publish."""

    def command(mirror_dir: Path):
        return [
            sys.executable,
            "-m",
            "vehicle_diff.cli",
            "publish",
            "--preset",
            "tiny",
            "--dataset",
            str(tiny_dataset),
            "--reid",
            str(tiny_reid),
            "--mirror_dir",
            str(mirror_dir),
            "--output_dir",
            str(mirror_dir.with_name(mirror_dir.name + "-report")),
        ]

    def finish_and_compare(mirror: Path):
        finished = subprocess.run(command(mirror), env=env, capture_output=True, text=True)
        assert finished.returncode == 0, finished.stderr[-2000:]
        for kind, name in (("datasets", "vehicle-diff"), ("models", "vehicle-diff-reid")):
            clean, killed = (root / kind / "vehicle-diff" / name for root in (tmp_path / "clean", mirror))
            assert git_out(killed, "rev-parse", "v1.0^{tree}") == git_out(clean, "rev-parse", "v1.0^{tree}")
            assert git_out(killed, "rev-parse", "v1.0") == git_out(killed, "rev-parse", "main")
            subprocess.run(["git", "-C", str(killed), "fsck", "--no-dangling"], check=True, capture_output=True)
            assert git_out(killed, "status", "--porcelain") == ""
            assert not list((killed / ".git").rglob("*.lock"))
        again = subprocess.run(command(mirror), env=env, capture_output=True, text=True)
        assert again.stdout.count("already published, unchanged") == 2

    env = python_env()
    assert subprocess.run(command(tmp_path / "clean"), env=env, capture_output=True).returncode == 0
    for point in ("publish_objects_written", "publish_committed", "publish_tagged"):
        for arrival in (1, 2):  # the dataset repo, then the re-ID repo
            mirror = tmp_path / f"{point}-{arrival}"
            killed = subprocess.run(
                command(mirror), env={**env, "VEHICLE_DIFF_KILL_AT": f"{point}:{arrival}"}, capture_output=True
            )
            assert killed.returncode == -signal.SIGKILL, (point, arrival, killed.stderr[-2000:])
            finish_and_compare(mirror)
    rng, mirror = random.Random(0), tmp_path / "random"
    for _ in range(3):
        process = subprocess.Popen(command(mirror), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=rng.uniform(0.5, 3.0))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
    finish_and_compare(mirror)


def test_stale_git_locks_are_removed_only_when_no_git_works_in_the_repo(
    tiny_dataset, second_dataset, tmp_path, monkeypatch
):
    main(dataset_args(tiny_dataset, tmp_path))
    repo = tmp_path / "m" / "datasets" / "vehicle-diff" / "vehicle-diff"
    locks = [repo / ".git" / "index.lock", repo / ".git" / "refs" / "heads" / "main.lock", repo / ".git" / "HEAD.lock"]
    for lock in locks:  # what a SIGKILLed git leaves: every later git command in the repo fails
        lock.write_text("")
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run(
            ["git", "-C", str(repo), "update-ref", "refs/heads/main", "HEAD"], check=True, capture_output=True
        )

    # a git process still at work in the repo: its locks are left alone, and publish says so
    busy = subprocess.Popen(["git", "-C", str(repo), "hash-object", "--stdin"], stdin=subprocess.PIPE)
    monkeypatch.setattr(publish, "GIT_WAIT_S", 1)
    try:
        with pytest.raises(UserInputError, match=rf"git process\(es\) \[{busy.pid}\] still work in"):
            main(dataset_args(second_dataset, tmp_path, "--version", "v2.0", "--output_dir", str(tmp_path / "r2")))
        assert all(lock.exists() for lock in locks)
    finally:
        busy.communicate(b"x")
    assert "published to" in main(dataset_args(second_dataset, tmp_path, "--version", "v2.0", "--overwrite"))[0]
    assert not any(lock.exists() for lock in locks)
    assert git_out(repo, "rev-parse", "v2.0") == git_out(repo, "rev-parse", "main")


@pytest.mark.parametrize(
    "flags",
    [
        ["--namespace", "..", "--dataset_repo", ".."],
        ["--namespace", "my org"],
        ["--dataset_repo", "a/b"],
        ["--namespace", "../escape"],
        ["--dataset_repo", "x--y"],
        ["--dataset_repo", "name.git"],
        ["--namespace", ""],
        ["--lora_repo=-bad"],
        ["--version", "v 1"],
        ["--version", "v1..0"],
        ["--version", "v1.lock"],
        ["--version", "a:b"],
        ["--version", "~v1"],
        ["--version", ""],
    ],
)
def test_hostile_ids_and_versions_are_refused_before_anything_is_written(tiny_dataset, tmp_path, monkeypatch, flags):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("user data")
    monkeypatch.chdir(workdir)
    with pytest.raises(UserInputError):
        main(
            [
                "--preset",
                "tiny",
                "--dataset",
                str(tiny_dataset),
                "--mirror_dir",
                ".",
                "--output_dir",
                str(tmp_path / "r"),
                *flags,
            ]
        )
    assert (
        sorted(p.name for p in workdir.iterdir()) == ["keep.txt"] and (workdir / "keep.txt").read_text() == "user data"
    )
    assert not (tmp_path / "r").exists()


def test_the_mirror_never_escapes_its_folder_or_takes_over_one(tiny_dataset, tmp_path):
    outside = tmp_path / "outside"
    (outside / "vehicle-diff").mkdir(parents=True)
    (outside / "vehicle-diff" / "keep.txt").write_text("user data")
    (tmp_path / "m" / "datasets").mkdir(parents=True)
    (tmp_path / "m" / "datasets" / "vehicle-diff").symlink_to(outside)  # the org folder points elsewhere
    with pytest.raises(UserInputError, match="is not inside"):
        main(dataset_args(tiny_dataset, tmp_path))
    assert sorted(p.name for p in (outside / "vehicle-diff").iterdir()) == ["keep.txt"]

    (tmp_path / "m" / "datasets" / "vehicle-diff").unlink()
    taken = tmp_path / "m" / "datasets" / "vehicle-diff" / "vehicle-diff"
    taken.mkdir(parents=True)
    (taken / "notes.txt").write_text("not a mirror repo")
    with pytest.raises(UserInputError, match="is not a mirror repo made by"):
        main(dataset_args(tiny_dataset, tmp_path))
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]


def test_force_moves_a_version(tiny_dataset, second_dataset, tmp_path):
    main(dataset_args(tiny_dataset, tmp_path))
    assert "published to" in main(dataset_args(second_dataset, tmp_path, "--force", "--overwrite"))[0]
    repo = tmp_path / "m" / "datasets" / "vehicle-diff" / "vehicle-diff"
    assert not any(
        name.startswith("data/query-") for name in git_out(repo, "ls-tree", "-r", "--name-only", "v1.0").split()
    )
    with pytest.raises(UserInputError, match="data/ is missing"):
        main(dataset_args(tmp_path, tmp_path))


def publish_cli(tmp_path, *flags, **env):
    command = [
        sys.executable,
        "-m",
        "vehicle_diff.cli",
        "publish",
        "--preset",
        "tiny",
        "--target",
        "hub",
        "--output_dir",
        str(tmp_path / "report"),
        *flags,
    ]
    base = {
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    return subprocess.run(command, capture_output=True, text=True, env=python_env(**base, **env), timeout=300)


def test_hub_target_offline_unreachable_or_without_token_is_one_line_exit_2(tiny_dataset, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserInputError, match="HF_HUB_OFFLINE is set") as offline:
        main(
            ["--preset", "tiny", "--target", "hub", "--dataset", str(tiny_dataset), "--output_dir", str(tmp_path / "r")]
        )
    assert "\n" not in str(offline.value)

    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    unreachable = publish_cli(tmp_path, "--dataset", str(tiny_dataset), "--hub_endpoint", closed, HF_TOKEN="hf_test")
    no_token = publish_cli(tmp_path, "--dataset", str(tiny_dataset), "--hub_endpoint", closed, HF_TOKEN="")
    for result, expected in ((unreachable, "cannot reach"), (no_token, "no Hugging Face token")):
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("vehicle-diff publish: error:")


@pytest.fixture
def fake_hub():
    from tests.hub_server import serve

    hub, server, endpoint = serve()
    yield hub, endpoint
    server.shutdown()


def test_hub_api_path_and_streaming_with_range_requests(
    fake_hub, tiny_dataset, second_dataset, trained_lora, tiny_reid, tmp_path
):
    hub, endpoint = fake_hub

    def run(*flags):
        return publish_cli(tmp_path, "--hub_endpoint", endpoint, *flags, HF_TOKEN="hf_test")

    first = run("--dataset", str(tiny_dataset), "--lora", str(trained_lora), "--reid", str(tiny_reid))
    assert first.returncode == 0, first.stderr[-3000:]
    oid, files = hub.files("datasets", "vehicle-diff/vehicle-diff", "v1.0")
    assert "README.md" in files and any(name.startswith("data/train-") for name in files) and "publish.json" in files
    _, lora_files = hub.files("models", "vehicle-diff/vehicle-diff-sdxl-lora", "v1.0")
    assert (trained_lora / "pytorch_lora_weights.safetensors").read_bytes() == lora_files[
        "pytorch_lora_weights.safetensors"
    ]
    assert "pytorch_lora_weights_kohya.safetensors" in lora_files
    assert {"model.safetensors", "reid_heads.safetensors"} <= set(
        hub.files("models", "vehicle-diff/vehicle-diff-reid", "v1.0")[1]
    )

    # streaming reads Parquet by HTTP ranges (footer first); the server answers 206 with exactly the bytes asked
    script = (
        "import datasets; ds = datasets.load_dataset('vehicle-diff/vehicle-diff', revision='v1.0', split='train', "
        "streaming=True); print('ROWS', sum(1 for _ in ds))"
    )
    env = python_env(mirror_client_env(endpoint, tmp_path / "hf-stream"))
    streamed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    splits = {s["name"]: s["num_examples"] for s in card_header(files["README.md"].decode())["dataset_info"]["splits"]}
    assert int(streamed.stdout.split("ROWS")[1]) == splits["train"]
    assert any(status == 206 and "/data/train-" in path for path, _, status in hub.range_requests)
    assert "streaming=True" in files["README.md"].decode()  # the Hub card says how to stream

    # binaries took the LFS path (batch API + PUT, committed by sha256), the card and configs the regular one
    import hashlib

    uploaded = set(hub.lfs_uploads)
    for name, data in [*files.items(), *lora_files.items()]:
        assert (hashlib.sha256(data).hexdigest() in uploaded) == name.endswith((".parquet", ".safetensors", ".png"))

    # an unknown version fails as on the Hub, even with another version of the repo in the cache
    script = (
        "import datasets\n"
        "datasets.load_dataset('vehicle-diff/vehicle-diff', revision='v1.0')\n"
        "try:\n"
        "    datasets.load_dataset('vehicle-diff/vehicle-diff', revision='v9.9')\n"
        "except Exception as error:\n"
        "    print('FAILED', type(error).__name__)\n"
        "else:\n"
        "    print('SERVED')\n"
    )
    env = python_env(mirror_client_env(endpoint, tmp_path / "hf-versions"))
    versions = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert versions.returncode == 0 and "FAILED" in versions.stdout, versions.stdout + versions.stderr[-3000:]

    commits = len(hub.repo("datasets", "vehicle-diff/vehicle-diff")["commits"])
    again = run("--dataset", str(tiny_dataset), "--overwrite")  # another report: --overwrite
    assert again.returncode == 0 and "already published, unchanged" in again.stdout
    assert len(hub.repo("datasets", "vehicle-diff/vehicle-diff")["commits"]) == commits  # nothing pushed

    refused = run("--dataset", str(second_dataset), "--overwrite")
    assert refused.returncode == 2 and "exists with other content" in refused.stderr
    moved = run("--dataset", str(second_dataset), "--force", "--overwrite")
    assert moved.returncode == 0, moved.stderr[-2000:]
    new_oid, new_files = hub.files("datasets", "vehicle-diff/vehicle-diff", "v1.0")
    assert new_oid != oid and not any(name.startswith("data/query-") for name in new_files)  # stale shards deleted


def test_the_test_server_answers_unknown_revisions_and_bad_card_metadata_as_the_hub_does(fake_hub, monkeypatch):
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the server is local
    hub, endpoint = fake_hub
    api = HfApi(endpoint=endpoint, token="hf_test")
    api.create_repo("org/data", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="org/data", repo_type="dataset")
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info("org/data", revision="v9.9")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/data", "a.txt", repo_type="dataset", revision="v9.9", endpoint=endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("org/missing")

    from tests.hub_server import yaml_errors

    def card(header: str) -> str:
        return f"---\n{header}\n---\n# card\n"

    assert yaml_errors(card("license: apache-2.0\nsize_categories:\n- n<1K"), "dataset") == []
    assert yaml_errors(card("size_categories:\n- tiny"), "dataset")
    assert yaml_errors(card("task_categories:\n- vehicle-stuff"), "dataset")
    assert yaml_errors(card("license: other"), "model")  # needs license_name
    assert yaml_errors(card("license: mit\nlicense: mit"), "model")  # duplicate key
    assert yaml_errors(card("base_model: not a repo id"), "model")
    assert yaml_errors(card("model-index:\n- results: [1]"), "model")
    with pytest.raises(ValueError, match="size_categories"):
        api.upload_file(
            path_or_fileobj=card("size_categories:\n- tiny").encode(),
            path_in_repo="README.md",
            repo_id="org/data",
            repo_type="dataset",
        )


def test_the_test_servers_ranges_are_exact():
    from tests.hub_server import byte_range

    assert byte_range(None, 10) is None
    assert byte_range("bytes=2-5", 10) == (2, 5) and byte_range("bytes=7-", 10) == (7, 9)
    assert byte_range("bytes=-3", 10) == (7, 9) and byte_range("bytes=8-100", 10) == (8, 9)
    assert byte_range("bytes=10-12", 10) is False and byte_range("bytes=5-2", 10) is False
    assert byte_range("items=1-2", 10) is False


def test_kohya_copy_is_native_sdxl_kohya_and_loads_to_the_same_unet(tiny_zoo, tmp_path):
    """The kohya copy has sd-scripts' SGM key names (input_blocks / middle_block / output_blocks, ResBlock inner
    names), the trained alpha and the metadata SDXL UIs classify by; diffusers' own SGM mapping loads it into the
    UNet the trained adapter means (for a LoRA on attention, resnet and embedding layers of every block), and the
    same fused UNet as the diffusers file for the finetune stage's LoRA."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors import safe_open
    from safetensors.torch import load_file
    from vehicle_diff.training.finetune_lora import lora_target_modules
    from vehicle_diff.training.lora_files import save_kohya_lora

    from vehicle_diff.models import load_sdxl_pipeline

    pipe = load_sdxl_pipeline("tiny:sdxl")  # rank 4 trained with alpha 8: scale 2, recorded in the file's metadata
    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2", "conv1", "conv2", "time_emb_proj"]
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in pipe.unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path / "lora",
        unet_lora_layers=layers,
        safe_serialization=True,
        unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
    )
    diffusers_file = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    kohya_file = save_kohya_lora(
        diffusers_file, tmp_path / "kohya" / "lora_kohya.safetensors", unet_config=dict(pipe.unet.config)
    )
    unit_alpha = save_kohya_lora(diffusers_file, tmp_path / "kohya" / "alpha4.safetensors", lora_alpha=4)

    with safe_open(str(kohya_file), framework="pt") as handle:
        kohya = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    downs = [k for k in kohya if k.endswith(".lora_down.weight")]
    modules = {k.removesuffix(".lora_down.weight") for k in downs}
    assert downs and all(k.startswith("lora_unet_") and "." not in k.split(".")[0] for k in kohya)
    assert not any(part in k for k in kohya for part in ("down_blocks", "mid_block_", "up_blocks"))
    # SDXL's SGM layout (sd-scripts' names): 2 resnets + attentions per down block, downsamplers between
    for module in (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",  # down block 1, first attention
        "lora_unet_input_blocks_8_1_transformer_blocks_1_attn2_to_out_0",  # down block 2, second layer
        "lora_unet_input_blocks_1_0_in_layers_2",  # down block 0, first resnet's conv1
        "lora_unet_input_blocks_5_0_emb_layers_1",  # time_emb_proj
        "lora_unet_middle_block_1_transformer_blocks_0_ff_net_2",
        "lora_unet_middle_block_2_out_layers_3",  # mid block second resnet's conv2
        "lora_unet_output_blocks_0_1_proj_in",
        "lora_unet_output_blocks_5_1_transformer_blocks_0_attn1_to_v",  # up block 1, last layer
        "lora_unet_output_blocks_8_0_in_layers_2",  # the last up block (no attention)
    ):
        assert module in modules, module
    assert all(kohya[f"{m}.alpha"].item() == 8.0 for m in modules)
    assert len(kohya) == 3 * len(downs)  # down, up, alpha per module
    assert metadata["ss_base_model_version"].startswith("sdxl_") and metadata["ss_v2"] == "False"
    assert (metadata["ss_network_module"], metadata["ss_network_dim"], metadata["ss_network_alpha"]) == (
        "networks.lora",
        "4",
        "8",
    )
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert metadata["modelspec.sai_model_spec"] == "1.0.0" and metadata["modelspec.resolution"] == "1024x1024"
    assert {"modelspec.implementation", "modelspec.title"} <= set(metadata)
    again = save_kohya_lora(diffusers_file, tmp_path / "again.safetensors", unet_config=dict(pipe.unet.config))
    assert again.read_bytes() == kohya_file.read_bytes()

    def fused_unet(file: Path | None) -> dict:
        fresh = load_sdxl_pipeline("tiny:sdxl")
        if file is not None:
            fresh.load_lora_weights(str(file.parent), weight_name=file.name)  # stock loader
            fresh.fuse_lora()
            fresh.unload_lora_weights()
        return {k: v.clone() for k, v in fresh.unet.state_dict().items()}

    # the trained adapter merged by peft itself: what every file must mean
    for module in pipe.unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    trained = {k.replace(".base_layer", ""): v for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    native, plain = fused_unet(kohya_file), fused_unet(None)
    assert native.keys() == trained.keys()
    assert max((trained[k] - plain[k]).abs().max() for k in plain) > 1e-3  # the LoRA changes the UNet
    assert max((native[k] - trained[k]).abs().max() for k in trained) < 1e-5
    wrong = fused_unet(unit_alpha)
    assert max((wrong[k] - trained[k]).abs().max() for k in trained) > 1e-4  # a wrong alpha would show

    # the finetune stage's LoRA (attention projections of the up blocks): the same UNet as the diffusers file
    pipe = load_sdxl_pipeline("tiny:sdxl")
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_modules("up_blocks")))
    with torch.no_grad():
        for name, parameter in pipe.unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path / "up",
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        safe_serialization=True,
        unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
    )
    diffusers_file = tmp_path / "up" / "pytorch_lora_weights.safetensors"
    kohya_file = save_kohya_lora(
        diffusers_file, tmp_path / "up" / "kohya.safetensors", unet_config=dict(pipe.unet.config)
    )
    assert all(k.startswith("lora_unet_output_blocks_") for k in load_file(kohya_file))
    reference, native = fused_unet(diffusers_file), fused_unet(kohya_file)
    assert max((reference[k] - plain[k]).abs().max() for k in plain) > 1e-3
    assert max((native[k] - reference[k]).abs().max() for k in reference) < 1e-5


def test_cards_claim_what_the_tiny_preset_did(tiny_dataset, trained_lora, tiny_reid):
    dataset_card = (tiny_dataset / "README.md").read_text()
    header = card_header(dataset_card)
    assert header["license"] == "apache-2.0" and header["annotations_creators"] == ["machine-generated"]
    assert header["language"] == ["en"] and header["source_datasets"] == ["original"]
    splits = {s["name"]: s["num_examples"] for s in header["dataset_info"]["splits"]}
    assert splits == json.loads((tiny_dataset / "card_context.json").read_text())["splits"]
    assert header["dataset_info"]["download_size"] == sum(
        p.stat().st_size for p in (tiny_dataset / "data").glob("*.parquet")
    )
    for section in (
        "## Uses",
        "### Out-of-Scope Use",
        "## Bias, Risks, and Limitations",
        "## Personal and Sensitive Information",
    ):
        assert section in dataset_card
    assert "stable-diffusion-xl-base-1.0" not in dataset_card and "RAIL" not in dataset_card
    assert "color check was **off**" in dataset_card and "Test data, not vehicles" in dataset_card

    lora = card_header((trained_lora / "README.md").read_text())
    assert "base_model" not in lora and lora["library_name"] == "diffusers" and lora["license"] == "apache-2.0"
    assert {
        "stable-diffusion-xl",
        "stable-diffusion-xl-diffusers",
        "text-to-image",
        "diffusers",
        "lora",
        "diffusers-training",
        "template:sd-lora",
    } <= set(lora["tags"])
    assert lora["widget"][0]["output"]["url"] == "validation.png" and lora["widget"][0]["text"]

    reid = card_header((tiny_reid / "README.md").read_text())
    assert "base_model" not in reid and reid["library_name"] == "timm" and reid["license"] == "apache-2.0"

    # provenance: every model's exact revision as its stage resolved it, the paper and the code on every card
    from vehicle_diff.cards import CODE_REPOSITORY, PAPER

    jobs = {
        name: json.loads((folder / "job.json").read_text())["components"]
        for name, folder in (("lora", trained_lora), ("reid", tiny_reid))
    }
    lora_card, reid_card = (trained_lora / "README.md").read_text(), (tiny_reid / "README.md").read_text()
    for card in (dataset_card, lora_card, reid_card):
        assert PAPER["title"] in card and "## Provenance" in card and "- Code: " in card and "`vehicle-diff` " in card
        assert (f"]({CODE_REPOSITORY})" in card) == bool(CODE_REPOSITORY)  # a link only where one is declared
    assert "not recorded" not in dataset_card and "not recorded" not in lora_card
    base_revision = jobs["lora"]["base_model_revision"]
    assert base_revision.startswith("sha256:") and f"`{base_revision}`" in lora_card
    lora_config = yaml.safe_load((trained_lora / "config.yaml").read_text())
    assert lora_config["provenance"]["base_model"]["revision"] == base_revision
    assert lora_config["provenance"]["caption_model"]["revision"].startswith("sha256:")
    backbone_revision = yaml.safe_load((tiny_reid / "config.yaml").read_text())["provenance"]["backbone"]["revision"]
    assert backbone_revision.startswith("sha256:") and f"`{backbone_revision}`" in reid_card
    filtered = json.loads((tiny_dataset / "card_context.json").read_text())["filter"]
    for key in ("detector_revision", "clip_revision"):
        assert filtered[key].startswith("sha256:") and f"`{filtered[key]}`" in dataset_card
    for card in (lora_card, reid_card):  # what a reviewer expects of a model card
        assert (
            "### Intended use" in card and "### Out-of-scope use" in card and "## Bias, Risks, and Limitations" in card
        )
    assert "identifying people" in reid_card.lower() and "without a legal basis" in reid_card


def test_the_dataset_cards_batching_snippet_runs_with_a_stock_dataloader(tiny_dataset, monkeypatch):
    card = (tiny_dataset / "README.md").read_text()
    monkeypatch.chdir(tiny_dataset)  # the local card loads "."
    namespace = {}
    exec(code_block(card), namespace)
    batch = namespace["batch"]
    assert batch["pixel_values"].shape[1:] == (3, 256, 256) and batch["pixel_values"].dtype.is_floating_point
    assert len(batch["vehicle_id"]) == len(batch["pixel_values"]) > 1


def test_cards_for_the_paper_settings():
    from vehicle_diff.cards import SDXL_BASE, model_ref, render_dataset_card, render_lora_card, render_reid_card

    sdxl = {"name": SDXL_BASE, "hub": True, "tiny": False, "local": False}
    detector, clip = model_ref("yolov5x6u.pt"), model_ref("hf-hub:timm/vit_large_patch14_clip_224.openai")
    dataset = render_dataset_card(
        {
            "splits": {"train": 10},
            "size_category": "n<1K",
            "stats": {"identities": {"train": 2}},
            "colors": ["red"],
            "catalog": "faker-vehicle (built-in)",
            "preset": "paper",
            "vehicle_diff_version": "0.1.0",
            "commit": "abc",
            "generation": {
                "base_model": sdxl,
                "base_model_revision": "c" * 40,
                "lora": {"file": "l.safetensors", "sha256": "d" * 64},
                "num_inference_steps": 50,
                "guidance_scale": 8.0,
                "width": 1024,
                "height": 1024,
            },
            "filter": {
                "detector": detector,
                "clip_model": clip,
                "color_check": True,
                "color_prompt": "a {color} vehicle",
                "detection_confidence": 0.65,
                "min_box_side": 250,
                "reference_side": 1024,
                "images": 12,
                "kept": 10,
                "pass_rate": 10 / 12,
                "per_reason": {"kept": 10, "wrong_color": 2},
                "near_duplicate_threshold": 0.95,
            },
        },
        repo_id="org/vehicle-diff",
        revision="v1.0",
    )
    text = str(dataset)
    assert "streaming=True" not in text  # the local card names no target
    assert dataset.data.license == "openrail++" and "stable-diffusion-xl" in dataset.data.tags
    assert 'load_dataset("org/vehicle-diff", revision="v1.0")' in text and "Test data" not in text
    assert "images whose\npredicted color differs from the prompt's were dropped" in text and "wrong_color 2" in text

    lora = render_lora_card(
        {
            "base_model": sdxl,
            "config": {"lora_scope": "up_blocks", "rank": 4, "lora_alpha": 4, "resolution": 1024},
            "caption_model": model_ref("Salesforce/blip2-opt-2.7b"),
            "caption_source": model_ref("/data/VeRi/image_train"),
            "datasets": [],
            "instance_prompt": "a photo of a vehicle,",
            "num_images": 378,
            "validation": {"prompts": ["p"], "seeds": [0]},
            "widget": [{"prompt": "a red car", "file": "validation.png"}],
            "example_prompt": "a red car",
            "lora_file": "w.safetensors",
        },
        repo_id="org/lora",
        revision="v1.0",
    )
    assert (
        lora.data.base_model == SDXL_BASE
        and lora.data.instance_prompt == "a photo of a vehicle,"
        and lora.data.license == "openrail++"
    )
    assert lora.data.widget == [{"text": "a red car", "output": {"url": "validation.png"}}]
    snippet = code_block(str(lora))
    assert (
        f'from_pretrained("{SDXL_BASE}"' in snippet
        and 'load_lora_weights("org/lora", weight_name="w.safetensors", revision="v1.0")' in snippet
    )
    assert "/data/VeRi" not in str(lora) and "`image_train`" in str(lora)

    common = {
        "architecture": "resnet50",
        "backbone": model_ref("resnet50.tv_in1k"),
        "base_model_hub_id": "timm/resnet50.tv_in1k",
        "stats": {"num_classes": 5},
        "config": {"image_size": [256, 256], "data_mode": "B"},
        "metrics": {"plain": {"mAP": 0.5, "rank1": 0.6, "rank5": 0.7, "rank10": 0.8, "mINP": 0.2}},
    }
    synthetic = {"name": "vehicle-diff", "hub": False, "base_model": sdxl, "path": "/x/vehicle-diff"}
    mixed = render_reid_card(
        {
            **common,
            "real_data": [{"kind": "veri776", "title": "VeRi-776"}],
            "synthetic_data": synthetic,
            "eval_data": {"name": "VeRi-776", "hub": False, "title": "VeRi-776 test", "split": "query"},
        }
    )
    assert mixed.data.base_model == "timm/resnet50.tv_in1k" and mixed.data.library_name == "timm"
    assert (
        mixed.data.license == "other"
        and mixed.data.license_name == "research-only"
        and "research use only" in str(mixed)
    )
    only_synthetic = render_reid_card(
        {
            **common,
            "real_data": [],
            "synthetic_data": synthetic,
            "eval_data": {**synthetic, "title": "held-out", "split": "query", "is_synthetic": True},
        },
        repo_id="org/reid",
        revision="v1.0",
        dataset_repo="org/vehicle-diff",
        dataset_revision="v1.0",
    )
    assert only_synthetic.data.license == "openrail++" and only_synthetic.data.datasets == ["org/vehicle-diff"]
    result = only_synthetic.data.eval_results[0]
    assert (result.dataset_type, result.dataset_split, result.dataset_revision) == ("org/vehicle-diff", "query", "v1.0")
    assert "/x/vehicle-diff" not in str(only_synthetic)

    # every card's metadata passes the Hub's offline-checkable rules; model cards state uses and risks
    from tests.hub_server import yaml_errors

    assert yaml_errors(str(dataset), "dataset") == []
    for card in (lora, mixed, only_synthetic):
        assert yaml_errors(str(card), "model") == []
        assert "### Out-of-scope use" in str(card) and "## Bias, Risks, and Limitations" in str(card)
    assert "`" + "c" * 40 + "`" in text  # the base model's commit


def test_a_hub_card_says_how_to_stream_and_a_mirror_card_how_to_load_through_olah(tiny_dataset):
    from vehicle_diff.cards import load_context, render_dataset_card

    context = load_context(tiny_dataset)
    hub = str(render_dataset_card(context, repo_id="org/ds", revision="v1.0", target="hub"))
    mirror = str(render_dataset_card(context, repo_id="org/ds", revision="v1.0", target="mirror"))
    assert 'load_dataset("org/ds", revision="v1.0", split="train", streaming=True)' in hub and "olah" not in hub
    assert "streaming=True" not in mirror
    assert "HF_ENDPOINT" in mirror and "olah" in mirror


@pytest.mark.parametrize(
    "version", ["main", "Main", "master", "HEAD", "refs/heads/main", "deadbeef1", "convert/parquet"]
)
def test_versions_a_branch_or_commit_would_shadow_are_refused_before_any_commit(tiny_dataset, tmp_path, version):
    with pytest.raises(UserInputError, match="clients would read it as a branch, a commit or a Hub ref"):
        main(dataset_args(tiny_dataset, tmp_path, "--version", version))
    assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists()


def test_version_main_is_one_line_on_the_command_line(tiny_dataset, tmp_path):
    command = [sys.executable, "-m", "vehicle_diff.cli", "publish", *dataset_args(tiny_dataset, tmp_path)]
    result = subprocess.run([*command, "--version", "main"], capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--version 'main'" in result.stderr and not (tmp_path / "m").exists()


def test_the_report_and_mirror_folders_follow_the_output_rules_before_any_push(
    tiny_dataset, second_dataset, tmp_path, monkeypatch
):
    workdir = tmp_path / "cwd"
    (workdir / "mine").mkdir(parents=True)
    (workdir / "keep.txt").write_text("user data")
    (workdir / "mine" / "report.txt").write_text("my own report")
    (workdir / "a-file").write_text("x")
    monkeypatch.chdir(workdir)
    base = ["--preset", "tiny", "--dataset", str(tiny_dataset)]
    for flags, message in [
        (["--mirror_dir", str(tmp_path / "m"), "--output_dir", "."], "refusing to use"),
        (["--mirror_dir", str(tmp_path / "m"), "--output_dir", "mine"], r"not an output of `publish` \(report.txt\)"),
        (["--mirror_dir", str(tmp_path / "m"), "--output_dir", "a-file"], "is a file"),
        (["--mirror_dir", ".", "--output_dir", str(tmp_path / "r")], "--mirror_dir .: refusing to use"),
    ]:
        with pytest.raises(UserInputError, match=message):
            main([*base, *flags])
    assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists()
    assert (workdir / "mine" / "report.txt").read_text() == "my own report"
    assert sorted(p.name for p in workdir.iterdir()) == ["a-file", "keep.txt", "mine"]

    args = ["--mirror_dir", str(tmp_path / "m"), "--output_dir", str(tmp_path / "r")]
    main([*base, *args])
    repo = tmp_path / "m" / "datasets" / "vehicle-diff" / "vehicle-diff"
    before = git_out(repo, "log", "--oneline", "--all")
    with pytest.raises(UserInputError, match=r"changed: .*settings.version: 'v1.0' -> 'v2.0'.*--overwrite"):
        main(["--preset", "tiny", "--dataset", str(second_dataset), *args, "--version", "v2.0"])
    assert git_out(repo, "log", "--oneline", "--all") == before  # refused before any push
    main(["--preset", "tiny", "--dataset", str(second_dataset), *args, "--version", "v2.0", "--overwrite"])
    assert "v2.0" in (tmp_path / "r" / "report.txt").read_text()
