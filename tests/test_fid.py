import numpy as np
import pytest

from training.fid import feature_statistics, frechet_distance, frechet_distance_of_features


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


def test_fid_stage_with_local_inception_weights(tmp_path):
    import torch
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    from tests.conftest import write_images
    from training.fid import main
    from vehicle_diff.errors import UserInputError

    torch.manual_seed(0)
    save_file(
        inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(), tmp_path / "inception.safetensors"
    )
    write_images(tmp_path / "real", [f"{i}.png" for i in range(4)], seed=0)
    write_images(tmp_path / "fake", [f"{i}.png" for i in range(4)], seed=1)
    args = [
        "--real_images",
        str(tmp_path / "real"),
        "--generated_images",
        str(tmp_path / "fake"),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    out = main([*args, "--inception_weights", str(tmp_path / "inception.safetensors")])
    import json

    result = json.loads((out / "fid.json").read_text())
    assert result["real_images"] == 4 and result["generated_images"] == 4
    from training.fid import image_features, inception_features_model

    model = inception_features_model(str(tmp_path / "inception.safetensors"))
    real = image_features(model, sorted((tmp_path / "real").glob("*.png")), 2, "cpu")
    fake = image_features(model, sorted((tmp_path / "fake").glob("*.png")), 2, "cpu")
    assert real.shape == (4, 2048)
    assert result["fid"] == pytest.approx(frechet_distance_of_features(real, fake), rel=1e-6)
    # random weights give huge activations: the distance of a set to itself is 0 up to float64 rounding
    assert abs(frechet_distance_of_features(real, real)) <= 1e-9 * np.trace(np.cov(real, rowvar=False))
    with pytest.raises(UserInputError, match="--inception_weights is required"):
        main(args)
