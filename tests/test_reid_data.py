"""The identity sampler's epoch, the synthetic subsample and dataset revisions, on hand-made inputs."""

import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from vehicle_diff.training.reid_data import IdentityBatchSampler, Sample, read_source, subsample_synthetic

from vehicle_diff.errors import UserInputError


def veri_like_labels(num_images=37_778, num_ids=576, seed=0):
    """VeRi-776's training numbers: 37,778 images of 576 identities, at least 6 images each."""
    counts = 6 + np.random.default_rng(seed).multinomial(num_images - 6 * num_ids, np.full(num_ids, 1 / num_ids))
    return np.repeat(np.arange(num_ids), counts).tolist()


@pytest.fixture(scope="module")
def veri_sampler():
    labels = veri_like_labels()
    return IdentityBatchSampler(labels, ["real"] * len(labels), p=16, k=4, mode="R", seed=0), labels


def test_an_epoch_is_a_pass_over_the_images(veri_sampler):
    sampler, labels = veri_sampler
    assert len(sampler) == 590 == 37_778 // (16 * 4)  # fast-reid's iters_per_epoch, not 576 // 16 = 36
    batches = list(sampler)
    assert len(batches) == 590
    for batch in batches:
        per_identity = Counter(labels[i] for i in batch)
        assert len(batch) == 64 and len(per_identity) == 16 and set(per_identity.values()) == {4}
    seen = Counter(i for batch in batches for i in batch)
    # images are dealt without replacement within a round: nearly every image once, none more than twice
    assert len(seen) >= 0.9 * len(labels) and max(seen.values()) <= 2


def test_processes_split_the_epoch_and_resume_skips(veri_sampler):
    sampler, labels = veri_sampler
    whole = sampler.batches()
    sources = ["real"] * len(labels)
    ranks = [IdentityBatchSampler(labels, sources, p=16, k=4, mode="R", seed=0, rank=r, world=3) for r in range(3)]
    assert [len(s) for s in ranks] == [196] * 3  # 590 // 3: the last 2 batches are left out
    assert [list(s) for s in ranks] == [whole[r:588:3] for r in range(3)]
    ranks[1].skip = 50
    assert list(ranks[1]) == whole[1:588:3][50:]


def test_order_depends_only_on_seed_and_epoch():
    labels = veri_like_labels(2_000, 40)
    sources = ["real"] * len(labels)

    def epoch(seed, number):
        sampler = IdentityBatchSampler(labels, sources, p=8, k=4, mode="R", seed=seed)
        sampler.set_epoch(number)
        return list(sampler)

    state = random.getstate()
    first = epoch(0, 3)
    assert random.getstate() == state  # its own generator: the global RNG is not touched
    random.seed(123)
    assert epoch(0, 3) == first
    assert epoch(0, 4) != first and epoch(1, 3) != first


def test_modes_pool_or_balance_real_and_synthetic():
    real = veri_like_labels(600, 30, seed=1)
    synthetic = [100 + label for label in veri_like_labels(1_400, 50, seed=2)]
    labels, sources = real + synthetic, ["real"] * 600 + ["synthetic"] * 1_400
    steps = {}
    for mode in ("R", "S", "D", "B"):
        sampler = IdentityBatchSampler(labels, sources, p=8, k=4, mode=mode, seed=0)
        steps[mode] = len(sampler)
        for batch in sampler:
            kinds = Counter(sources[i] for i in batch)
            assert len(batch) == (64 if mode == "B" else 32) and set(Counter(labels[i] for i in batch).values()) == {4}
            if mode == "R":
                assert kinds == {"real": 32}
            if mode == "S":
                assert kinds == {"synthetic": 32}
            if mode == "B":
                assert kinds == {"real": 32, "synthetic": 32}  # a real mini-batch merged with a synthetic one
    assert steps == {"R": 600 // 32, "S": 1_400 // 32, "D": 2_000 // 32, "B": 2_000 // 64}


def test_identities_with_fewer_than_k_images_repeat_some():
    labels = [0, 1, 1, 2, 2, 2] + [3] * 10
    sampler = IdentityBatchSampler(labels, ["real"] * 16, p=2, k=4, mode="R", seed=0)
    assert len(sampler) == 2
    for batch in sampler:
        assert set(Counter(labels[i] for i in batch).values()) == {4}


def test_sampler_refuses_too_few_identities():
    with pytest.raises(UserInputError, match="only 3 identities for --ids_per_batch 4"):
        IdentityBatchSampler([0, 0, 1, 1, 2, 2], ["real"] * 6, p=4, k=2, mode="R", seed=0)
    with pytest.raises(UserInputError, match="only 1 synthetic identities"):
        IdentityBatchSampler([0, 1, 2, 3], ["real"] * 3 + ["synthetic"], p=2, k=2, mode="B", seed=0)


def synthetic_samples(sizes):
    return [Sample(f"{pid}-{n}.png", pid, 0) for pid, size in enumerate(sizes) for n in range(size)]


def per_identity(samples):
    return Counter(s.pid for s in samples)


def test_subsample_deals_images_round_robin():
    samples = synthetic_samples([1, 2, 3, 5, 8, 13, 21])
    kept = subsample_synthetic(samples, 20, seed=0)
    counts = per_identity(kept)
    # a pair each (the single-image identity gives its one), then one more each round: 13, 18, 20 images
    assert len(kept) == 20 and [counts[0], counts[1], counts[2]] == [1, 2, 3]
    assert sorted(counts[pid] for pid in (3, 4, 5, 6)) == [3, 3, 4, 4]
    positions = [samples.index(s) for s in kept]
    assert positions == sorted(positions)  # dataset order kept
    assert subsample_synthetic(samples, 20, seed=0) == kept
    assert subsample_synthetic(samples, 20, seed=1) != kept
    assert subsample_synthetic(samples, None, seed=0) == samples == subsample_synthetic(samples, 999, seed=0)


def test_subsample_keeps_pairs_when_images_are_scarce():
    samples = synthetic_samples([6] * 10 + [1] * 3)
    kept = subsample_synthetic(samples, 7, seed=0)
    counts = per_identity(kept)
    assert len(kept) == 7 and sorted(counts.values()) == [2, 2, 3]  # 3 identities with positives, no singles
    assert all(pid < 10 for pid in counts)  # the single-image identities are left out
    kept = subsample_synthetic(samples, 26, seed=0)  # two each for the ten, then the three singles
    assert len(kept) == 26 and all(per_identity(kept)[pid] >= 2 for pid in range(10))
    with pytest.raises(UserInputError, match="must be positive"):
        subsample_synthetic(samples, 0, seed=0)


def test_dataset_revision_is_pinned(monkeypatch, synthetic_dataset, tmp_path):
    import shutil

    import datasets

    calls = []
    real_load = datasets.load_dataset

    def recording_load(name, **kwargs):
        calls.append((name, kwargs.get("revision")))
        return real_load(name, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", recording_load)
    split = read_source(f"{synthetic_dataset}@v1.0")
    assert calls[-1] == (str(synthetic_dataset), "v1.0") and split.name == f"{synthetic_dataset}@v1.0"
    assert len(split.train) == 24
    with_at = tmp_path / "run@2"
    shutil.copytree(synthetic_dataset, with_at)
    read_source(str(with_at))  # an existing path is never split at its @
    assert calls[-1] == (str(with_at), None)
    with pytest.raises(UserInputError, match="NAME@REVISION"):
        read_source("ORG/vehicle-diff@")


def write_split(path, ids, per_id=2, seed=0):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = [
        {"image": Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)), "vehicle_id": pid, "camera": i}
        for pid in ids
        for i in range(per_id)
    ]
    datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).to_parquet(str(path))


def test_a_replaced_train_parquet_is_read_as_it_is_now(synthetic_dataset, tmp_path):
    import os
    import shutil

    folder = tmp_path / "vehicle-diff"
    shutil.copytree(synthetic_dataset, folder)
    train = folder / "data" / "train-00000-of-00001.parquet"
    assert len(read_source(str(folder)).train) == 24
    stat = train.stat()
    write_split(train, range(5))  # another export's train split, under the same name and time stamp
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(read_source(str(folder)).train) == 10


def test_a_truncated_split_parquet_is_named_in_one_line(synthetic_dataset, tmp_path):
    import shutil

    folder = tmp_path / "vehicle-diff"
    shutil.copytree(synthetic_dataset, folder)
    query = folder / "data" / "query-00000-of-00001.parquet"
    query.write_bytes(query.read_bytes()[: query.stat().st_size // 2])
    with pytest.raises(UserInputError, match=r"query-00000-of-00001\.parquet: not a readable Parquet file") as error:
        read_source(str(folder))
    assert "\n" not in str(error.value)
    command = ["train-reid", "--preset", "tiny", "--synthetic_data", str(folder), "--data_mode", "S"]
    result = subprocess.run(
        [sys.executable, "-m", "vehicle_diff.cli", *command, "--output_dir", str(tmp_path / "reid")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"vehicle-diff train-reid: error: {error.value}"
    ]
    assert not (tmp_path / "reid").exists()


def test_train_reid_fingerprints_the_content_of_its_data(veri_folder, tmp_path):
    import shutil

    from vehicle_diff.training.train_reid import TrainReIDConfig, job_components

    root = tmp_path / "VeRi"
    shutil.copytree(veri_folder, root)
    config = TrainReIDConfig(real_data=f"veri776:{root}", data_mode="R")
    before = job_components(config)
    image = root / "image_train" / "0001_c001_00000001_0.jpg"
    data = image.read_bytes()
    image.write_bytes(data[:-2] + bytes([data[-2] ^ 1, data[-1]]))  # same name, same size, other content
    assert job_components(config)["real_data"] != before["real_data"]


def test_a_split_parquet_damaged_behind_its_footer_is_named_in_one_line(synthetic_dataset, tmp_path):
    import shutil

    folder = tmp_path / "vehicle-diff"
    shutil.copytree(synthetic_dataset, folder)
    gallery = folder / "data" / "gallery-00000-of-00001.parquet"
    data = bytearray(gallery.read_bytes())
    data[4:68] = bytes(range(64))  # the first page header: the footer, and so the metadata, stay whole
    gallery.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match=r"gallery-00000-of-00001\.parquet: cannot be read") as error:
        read_source(str(folder))
    assert "\n" not in str(error.value)


def fake_cityflow(root, with_labels):
    """CityFlowV2's files, empty images: 3 training identities, 2 queries and 3 test images with labels."""
    (root / "image_train").mkdir(parents=True)
    items = "".join(
        f'<Item imageName="{i:06d}.jpg" vehicleID="{1 + i % 3:04d}" cameraID="c{1 + i % 2:03d}" />' for i in range(6)
    )
    (root / "train_label.xml").write_text(
        f'<?xml version="1.0" encoding="gb2312"?><TrainingImages><Items>{items}</Items></TrainingImages>'
    )
    for part, count in (("query", 2), ("test", 3)):
        (root / f"image_{part}").mkdir()
        names = [f"{i + 1:06d}.jpg" for i in range(count)]
        for name in names:
            (root / f"image_{part}" / name).touch()
        (root / f"name_{part}.txt").write_text("\n".join(names) + "\n")
    if with_labels:
        np.save(root / "query_annotation.npy", np.array([[5, 400], [6, 401]]))
        np.save(root / "gallery_annotation.npy", np.array([[5, 401], [7, 400], [5, 400]]))
    return root


def test_cityflow_evaluates_on_the_official_query_and_test_when_labels_are_given(tmp_path):
    split = read_source(f"cityflow:{fake_cityflow(tmp_path / 'labelled', with_labels=True)}")
    assert "official" in split.name and len(split.train) == 6
    assert [(s.image.name, s.pid) for s in split.query] == [("000001.jpg", 400), ("000002.jpg", 401)]
    assert [(s.image.parent.name, s.pid) for s in split.gallery] == [("image_test", 401), ("image_test", 400)] + [
        ("image_test", 400)
    ]
    # the offline evaluation counts every gallery image: a same-camera match is never junk
    assert len({s.camid for s in split.gallery}) == 3 and not split.cameras

    fallback = read_source(f"cityflow:{fake_cityflow(tmp_path / 'unlabelled', with_labels=False)}")
    assert "TRAINING identities" in fallback.name
    assert all(s.image.parent.name == "image_train" for s in fallback.query + fallback.gallery)


def test_cityflow_labels_that_do_not_match_the_name_list_are_refused(tmp_path):
    root = fake_cityflow(tmp_path / "c", with_labels=True)
    np.save(root / "gallery_annotation.npy", np.array([[5, 401]]))
    with pytest.raises(UserInputError, match="gallery_annotation.npy: expected 3 rows"):
        read_source(f"cityflow:{root}")


def test_random_sampler_deals_shuffled_images_without_identity_structure():
    """The IDE baseline's sampling: each epoch a seeded shuffle of the pool's images in batches of P x K."""
    labels = veri_like_labels()
    sources = ["real"] * len(labels)
    sampler = IdentityBatchSampler(labels, sources, p=16, k=4, mode="R", seed=0, random_batches=True)
    batches = sampler.batches()
    assert len(batches) == len(sampler) == 590 and all(len(batch) == 64 for batch in batches)
    flat = [i for batch in batches for i in batch]
    assert len(set(flat)) == len(flat) == 590 * 64  # no image twice in an epoch
    identity_sampler = IdentityBatchSampler(labels, sources, p=16, k=4, mode="R", seed=0)
    assert (
        max(len(set(labels[i] for i in b)) for b in batches)
        > 16
        >= len({labels[i] for i in identity_sampler.batches()[0]})
    )
    mixed = ["real"] * 10_000 + ["synthetic"] * (len(labels) - 10_000)
    with pytest.raises(UserInputError, match="balances identities"):
        IdentityBatchSampler(labels, mixed, p=16, k=4, mode="B", seed=0, random_batches=True)
