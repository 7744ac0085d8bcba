"""Small helpers the tests and the benchmarks share: images and generation records written fast, FID Inception
weights made without a download, and the per-query re-ID evaluator that toolkits write (the reference our
vectorised one is checked against)."""

from __future__ import annotations

import numpy as np


def write_images(folder, names, seed=0, size=(48, 64)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)


def fake_generation(out_dir, count: int, seed: int = 0):
    """`count` random 64 px images with generation records (10 per identity), written fast, for filter runs
    that need many images."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        identity = f"red-2000-brand-model{index // 10}-sedan"
        file_name = f"images/{identity}/{identity}-{index % 10:04d}.png"
        (out_dir / file_name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out_dir / file_name, compress_level=1)
        records.append(
            {
                "image_id": f"{identity}-{index % 10:04d}",
                "identity": identity,
                "vehicle_id": index // 10,
                "color": "red",
                "file_name": file_name,
                "width": 64,
                "height": 64,
                "plan_index": index,
            }
        )
    pq.write_table(pa.Table.from_pylist(records), out_dir / "records.parquet")
    return out_dir


def random_fid_weights(path):
    """torch-fidelity's FID Inception with random weights, saved as its state dict under the release's file
    name. Its constructor always loads weights (downloading them when given no path), so loading is stubbed
    out while it is built. He-initialised convolutions keep the activations from vanishing over 90+ layers."""
    from unittest import mock

    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    with (
        mock.patch.object(inception, "load_state_dict_from_url", return_value={}),
        mock.patch.object(inception.FeatureExtractorInceptionV3, "load_state_dict"),
    ):
        model = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.data = torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5
    torch.save(model.state_dict(), path)
    return path


def reference_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, kind="stable"):
    """One query at a time, as re-ID toolkits write it (a stable sort keeps ties in gallery order; the benchmark
    times it with NumPy's default, faster sort)."""
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind=kind)
        remove = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        matches = (g_pids[order] == q_pids[q])[~remove].astype(np.float64)
        if not matches.any():
            continue
        cmc = matches.cumsum()
        cmc[cmc > 1] = 1
        padded = np.ones(max_rank)
        padded[: min(max_rank, len(cmc))] = cmc[:max_rank]
        all_cmc.append(padded)
        positions = np.where(matches == 1)[0]
        all_inp.append(matches.sum() / (positions.max() + 1))
        precision = matches.cumsum() / (np.arange(len(matches)) + 1)
        all_ap.append((precision * matches).sum() / matches.sum())
    return np.mean(all_ap), np.mean(all_cmc, axis=0), np.mean(all_inp)
