import json

import numpy as np
import pytest
from vehicle_diff.training.fid import (
    WEIGHTS_FILE_NAMES,
    feature_statistics,
    frechet_distance,
    frechet_distance_of_features,
)

from vehicle_diff.errors import UserInputError
from vehicle_diff.testing import random_fid_weights


def test_one_dimensional_gaussians():
    # (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(
        4 + 1
    )


def test_diagonal_and_commuting_covariances():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    expected = 9 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    # a common rotation of both Gaussians does not change the distance
    assert frechet_distance(
        rotation @ mu1, rotation @ s1 @ rotation.T, rotation @ mu2, rotation @ s2 @ rotation.T
    ) == pytest.approx(expected)


def test_non_commuting_covariances_match_the_definition():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = a @ a.T + np.eye(4), b @ b.T + np.eye(4)
    w, v = np.linalg.eigh(s1)
    root = v @ np.diag(np.sqrt(w)) @ v.T
    # Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2))
    wm, vm = np.linalg.eigh(root @ s2 @ root)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(wm).sum()
    assert frechet_distance(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(expected)
    assert frechet_distance(np.zeros(4), s1, np.zeros(4), s1) == pytest.approx(0, abs=1e-9)


def test_sampled_features_converge_to_the_known_distance():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, size=(200_000, 2))
    y = rng.normal([2, 0], [1, 3], size=(200_000, 2))
    assert frechet_distance_of_features(x, y) == pytest.approx(4 + 0 + 4, rel=0.02)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 3)))


def write_images(folder, sizes, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, (height, width) in enumerate(sizes):
        ramp = np.linspace(0, 1, width)[None, :, None] * rng.uniform(0, 255, 3)
        noise = rng.integers(0, 256, (height, width, 3)) * (seed % 2)
        array = np.clip(0.5 * ramp + 0.5 * noise + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        files.append(folder / f"{index}.png")
        Image.fromarray(array).save(files[-1])
    return files


def uint8_tensor(file):
    import torch
    from PIL import Image

    with Image.open(file) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


@pytest.fixture(scope="module")
def fid_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    weights = random_fid_weights(root / WEIGHTS_FILE_NAMES[0])
    real = write_images(root / "real", [(48, 64)] * 4 + [(40, 40)] * 2, seed=1)  # two sizes: two batches
    fake = write_images(root / "fake", [(32, 32)] * 5, seed=2)
    return root, weights, real, fake


def test_fid_stage_equals_torchmetrics_and_torch_fidelity(fid_inputs, tmp_path):
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torchmetrics.image.fid import FrechetInceptionDistance
    from vehicle_diff.training.fid import main

    root, weights, real, fake = fid_inputs
    out = main(
        [
            "--real_images",
            str(root / "real"),
            "--generated_images",
            str(root / "fake"),
            "--batch_size",
            "3",
            "--inception_weights",
            str(weights),
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    result = json.loads((out / "fid.json").read_text())
    assert result["real_images"] == 6 and result["generated_images"] == 5

    # torchmetrics by hand: one image per update, in file order
    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights), antialias=False)
    with torch.no_grad():
        for files, is_real in ((real, True), (fake, False)):
            for file in files:
                metric.update(uint8_tensor(file)[None], real=is_real)
        expected = float(metric.compute())
    assert expected > 1e-3
    assert result["fid"] == pytest.approx(expected, rel=1e-4)

    # torch-fidelity's own extractor (TensorFlow-style resize) and a float64 Fréchet distance agree as well
    extractor = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
    )
    with torch.no_grad():
        features = [
            np.concatenate([extractor(uint8_tensor(f)[None])[0].double().numpy() for f in files])
            for files in (real, fake)
        ]
    assert result["fid"] == pytest.approx(frechet_distance_of_features(*features), rel=1e-3)


def test_fid_weights_are_found_in_the_hub_cache_or_refused_in_one_line(fid_inputs, tmp_path, monkeypatch):
    from vehicle_diff.training.fid import main

    root, weights, _, _ = fid_inputs
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    args = [
        "--real_images",
        str(root / "real"),
        "--generated_images",
        str(root / "fake"),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    with pytest.raises(UserInputError) as error:
        main(args)
    message = str(error.value)
    assert (
        "\n" not in message
        and "--inception_weights" in message
        and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    )
    assert all(name in message for name in WEIGHTS_FILE_NAMES)
    with pytest.raises(UserInputError, match="no such file"):
        main([*args, "--inception_weights", str(tmp_path / "missing.pth")])
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / WEIGHTS_FILE_NAMES[1]).symlink_to(weights)  # pytorch-fid's name for the same tensors
    result = json.loads((main(args) / "fid.json").read_text())
    assert result["weights_file"] == WEIGHTS_FILE_NAMES[1] and result["fid"] > 0  # the name, not a machine path


def test_fid_refuses_files_that_are_not_the_inception_state_dict(tmp_path, fid_inputs):
    import torch
    from vehicle_diff.training.fid import main

    root, _, _, _ = fid_inputs
    args = [
        "--real_images",
        str(root / "real"),
        "--generated_images",
        str(root / "fake"),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(UserInputError, match="not the FID Inception-v3 state dict"):
        main([*args, "--inception_weights", str(tmp_path / "other.pth")])
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a module: code on unpickling
    with pytest.raises(UserInputError, match="not a tensors-only state dict"):
        main([*args, "--inception_weights", str(tmp_path / "pickled.pth")])
    with pytest.raises(UserInputError, match="--batch_size must be positive"):
        main([*args, "--batch_size", "0"])


def fake_filter_output(folder, crops, rejected):
    """A filter output's files: crops/ and records.parquet, with `rejected` (indexes) failing the color check."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "crops" / "v0").mkdir(parents=True)
    rows = []
    for index, crop in enumerate(crops):
        shutil.copy(crop, folder / "crops" / "v0" / f"img-{index}.png")
        rows.append(
            {
                "image_id": f"img-{index}",
                "identity": "v0",
                "vehicle_id": 0,
                "color": "red",
                "kept": index not in rejected,
                "reject_reason": "wrong_color" if index in rejected else None,
                "crop_file": f"crops/v0/img-{index}.png",
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), folder / "records.parquet")
    return folder


def test_fid_of_a_filter_output_uses_its_kept_crops_only(fid_inputs, tmp_path):
    """Two filter outputs of the same crops, with and without the color check: the check's rejects leave the
    FID, which then equals torchmetrics on exactly the kept crops; an exported dataset of them gives the same."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance
    from vehicle_diff.training.fid import main

    root, weights, real, _ = fid_inputs
    crops = write_images(tmp_path / "crops", [(30 + 3 * i, 20 + 5 * i) for i in range(6)], seed=3)  # all sizes differ
    crops += write_images(tmp_path / "odd", [(30, 30)] * 2, seed=4)  # unlike the others: what the check drops
    without = fake_filter_output(tmp_path / "no-sf", crops, rejected=set())
    with_check = fake_filter_output(tmp_path / "sf", crops, rejected={6, 7})

    def fid(generated, name):
        args = ["--real_images", str(root / "real"), "--generated_images", str(generated), "--batch_size", "4"]
        out = main([*args, "--inception_weights", str(weights), "--output_dir", str(tmp_path / name)])
        return json.loads((out / "fid.json").read_text())

    result, unchecked = fid(with_check, "fid-sf"), fid(without, "fid-no-sf")
    assert result["generated_images"] == 6 and unchecked["generated_images"] == 8
    assert result["images"]["generated_images"] == [f"img-{i}" for i in range(6)]
    assert result["sources"]["generated_images"]["kind"].startswith("filter output")
    assert result["fid"] != pytest.approx(unchecked["fid"], rel=1e-3)

    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights), antialias=False)
    with torch.no_grad():
        for files, is_real in ((real, True), (crops[:6], False)):
            for file in files:
                metric.update(uint8_tensor(file)[None], real=is_real)
        expected = float(metric.compute())
    assert result["fid"] == pytest.approx(expected, rel=1e-4)

    exported = tmp_path / "vehicle-diff" / "data"
    exported.mkdir(parents=True)
    for split, part in (("train", range(4)), ("gallery", range(4, 6))):
        images = [{"bytes": crops[i].read_bytes(), "path": None} for i in part]
        table = pa.table({"image": images, "image_id": [f"img-{i}" for i in part]})
        pq.write_table(table, exported / f"{split}-00000-of-00001.parquet", row_group_size=1)
    from_dataset = fid(exported.parent, "fid-dataset")
    assert from_dataset["sources"]["generated_images"]["kind"] == "exported dataset"
    assert from_dataset["fid"] == pytest.approx(expected, rel=1e-4)


def test_fid_holds_at_most_a_batch_of_images_whatever_their_sizes(tmp_path):
    """Images of all different sizes used to wait until the last file; now no update waits for more than a batch."""
    from PIL import Image
    from vehicle_diff.training.fid import update_with_images

    files = write_images(tmp_path, [(10 + i, 12) for i in range(10)], seed=1)
    waiting, seen = [], []

    class Metric:
        def update(self, batch, real):
            seen.append(batch.shape[0])

    def open_image(name):
        waiting.append(len(waiting) - sum(seen))
        return Image.open(files[int(name)])

    update_with_images(Metric(), [str(i) for i in range(10)], open_image, real=True, batch_size=3, device="cpu")
    assert sum(seen) == 10 and max(waiting) < 3
