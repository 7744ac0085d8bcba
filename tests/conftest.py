import os
import subprocess
import sys
from pathlib import Path

import pytest

from vehicle_diff.testing import fake_generation, write_images  # noqa: F401 (tests import them from here too)

# No test may reach a model hub: these machines have none, and a test that needs one is a broken test.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["YOLO_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session", autouse=True)
def model_hash_cache(tmp_path_factory):
    """Model content hashes are remembered in a folder of this test session, not in the user's cache."""
    os.environ["VEHICLE_DIFF_CACHE"] = str(tmp_path_factory.mktemp("hash-cache"))
    return Path(os.environ["VEHICLE_DIFF_CACHE"])


def launch_two_processes(module: str, args: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch` with 2 CPU processes (gloo); one thread each, as accelerate sets for several processes."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "-m",
        module,
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def sigkill_after_shards(command: list[str], stage: str, shards_dir, shards: int = 2) -> int:
    """Run `command` killed right after its `shards`-th record shard is written; returns how many shards exist."""
    run_killed_at(command, f"{stage}.shard_written:{shards}")
    return len(list(shards_dir.glob("batch-*.jsonl")))


def run_killed_at(command: list[str], point: str) -> None:
    """Run `command` with a SIGKILL injected at the named fault point `point` (`NAME` or `NAME:N`)."""
    import signal

    env = {**os.environ, "VEHICLE_DIFF_KILL_AT": point}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == -signal.SIGKILL, (
        f"ended with {result.returncode} before {point}: {result.stderr[-2000:]}"
    )


def decompression_bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels (8-bit RGB) and whose data is a few bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The tiny model zoo, built once per test session; `tiny:NAME` ids resolve into it."""
    from vehicle_diff.tiny_models import build_zoo

    zoo = build_zoo(tmp_path_factory.mktemp("zoo") / "tiny-models", seed=0)
    os.environ["VEHICLE_DIFF_TINY_MODELS"] = str(zoo)
    return zoo


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_prompts(tiny_zoo, tmp_path_factory):
    """A tiny preset prompt library (8 identities)."""
    from vehicle_diff.generation.prompts import main

    return main(["--preset", "tiny", "--output_dir", str(tmp_path_factory.mktemp("prompts"))])


def make_lora(pipe, out_dir, rank=4, seed=0):
    """A LoRA on the UNet's attention projections with non-zero weights, saved in diffusers' format."""
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in pipe.unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    type(pipe).save_lora_weights(out_dir, unet_lora_layers=layers, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="session")
def tiny_lora(tiny_zoo, tmp_path_factory):
    from vehicle_diff.models import load_sdxl_pipeline

    return make_lora(load_sdxl_pipeline("tiny:sdxl"), tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="session")
def tiny_generated(tiny_prompts, tmp_path_factory):
    """The tiny preset's generation output (8 identities x 3 images, 64 px)."""
    from vehicle_diff.generation.generate import main

    out = tmp_path_factory.mktemp("generated") / "gen"
    return main(["--preset", "tiny", "--prompts", str(tiny_prompts), "--output_dir", str(out)])


@pytest.fixture(scope="session")
def tiny_captions(tiny_generated, tmp_path_factory):
    """An imagefolder captioned by the tiny BLIP-2 (the generated tiny images stand in for target images)."""
    from vehicle_diff.generation.caption import main

    out = tmp_path_factory.mktemp("captions") / "captions"
    return main(
        [
            "--preset",
            "tiny",
            "--input_images",
            str(tiny_generated / "images"),
            "--num_images",
            "6",
            "--output_dir",
            str(out),
        ]
    )


@pytest.fixture(scope="session")
def veri_folder(tmp_path_factory):
    """A miniature VeRi-776 layout: 6 train ids, 4 test ids, 3 cameras, VVVV_cCCC_FRAME_0.jpg names."""
    root = tmp_path_factory.mktemp("veri") / "VeRi"
    write_images(
        root / "image_train",
        [f"{pid:04d}_c{cam:03d}_{frame:08d}_0.jpg" for pid in range(1, 7) for cam in (1, 2, 3) for frame in (1, 2)],
    )
    write_images(root / "image_query", [f"{pid:04d}_c001_{9:08d}_0.jpg" for pid in range(10, 14)], seed=1)
    write_images(
        root / "image_test",
        [f"{pid:04d}_c{cam:03d}_{frame:08d}_0.jpg" for pid in range(10, 14) for cam in (1, 2) for frame in (1, 2)],
        seed=2,
    )
    return root


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """A small dataset in the published layout: Parquet shards data/{train,query,gallery}-*.parquet."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("synthetic") / "dataset"
    (root / "data").mkdir(parents=True)
    for split, ids, per_id in (("train", range(8), 3), ("query", range(8, 11), 1), ("gallery", range(8, 11), 2)):
        rows = [
            {
                "image": Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)),
                "vehicle_id": pid,
                "camera": (index + (1 if split == "gallery" else 0)) % 3,
            }
            for pid in ids
            for index in range(per_id)
        ]
        table = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
        table.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.fixture(scope="session")
def tiny_filtered(tiny_generated, tmp_path_factory):
    from vehicle_diff.generation.filter import main

    return main(
        [
            "--preset",
            "tiny",
            "--generated",
            str(tiny_generated),
            "--output_dir",
            str(tmp_path_factory.mktemp("filtered") / "out"),
        ]
    )


@pytest.fixture(scope="session")
def tiny_dataset(tiny_filtered, tmp_path_factory):
    from vehicle_diff_dataset import main

    return main(
        [
            "--preset",
            "tiny",
            "--filtered",
            str(tiny_filtered),
            "--output_dir",
            str(tmp_path_factory.mktemp("dataset") / "vehicle-diff"),
        ]
    )
