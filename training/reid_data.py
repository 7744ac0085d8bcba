"""Re-ID data: the public benchmarks' folder layouts, our HF dataset, and identity (P x K) batch sampling.

Every source becomes lists of `Sample(path_or_image, pid, camid)`. Training identities are relabelled to
0..N-1; synthetic identities are shifted past the real ones so the two never collide.
"""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from vehicle_diff.errors import UserInputError

VERI_NAME = re.compile(r"^(\d+)_c(\d+)_")


@dataclass(frozen=True)
class Sample:
    image: object  # a path, or a PIL image / datasets image cell
    pid: int
    camid: int


@dataclass
class Split:
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    name: str
    cameras: bool = True  # False: camid is a per-image stand-in (nothing is junk), not a camera to show


def parse_veri_name(path: Path) -> tuple[int, int]:
    match = VERI_NAME.match(path.name)
    if not match:
        raise UserInputError(
            f"{path}: not a VeRi-776 style name (expected VVVV_cCCC_..., e.g. 0001_c001_00016450_0.jpg)"
        )
    return int(match.group(1)), int(match.group(2))


def _folder(root: Path, name: str, layout: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise UserInputError(
            f"{folder}: missing. Expected the {layout} layout: {root}/{{image_train,image_query,image_test}}/"
        )
    return folder


def read_veri776(root: str) -> Split:
    """VeRi-776 as released: image_train/, image_query/, image_test/ with VVVV_cCCC_... names."""
    root = Path(root)

    def samples(name):
        return [Sample(p, *parse_veri_name(p)) for p in sorted(_folder(root, name, "VeRi-776").glob("*.jpg"))]

    return Split(relabel(samples("image_train")), samples("image_query"), samples("image_test"), "VeRi-776")


CITYFLOW_LABELS = ("query_annotation.npy", "gallery_annotation.npy")


def read_cityflow(root: str, query_fraction: float = 0.2, seed: int = 0) -> Split:
    """CityFlowV2 (AI City Challenge track 2): image_train/ + train_label.xml train. The benchmark's own test is
    image_query/ against image_test/ (in the order of name_query.txt / name_test.txt); when ROOT holds their
    ground truth in the public offline evaluation's format (query_annotation.npy, gallery_annotation.npy: one
    (camera id, vehicle id) row per listed image), evaluation uses exactly that, and, as that evaluation does,
    counts every gallery image (no same-camera junk). Without those files the test labels are unknown, so a
    seeded 1/3 of the training identities is held out instead (one image per (identity, camera) of it is a
    query, up to `query_fraction` of its images, the rest gallery) and the split's name says so."""
    root = Path(root)
    label_file = root / "train_label.xml"
    images = _folder(root, "image_train", "CityFlowV2 (AIC track 2)")
    if not label_file.is_file():
        raise UserInputError(f"{label_file}: missing. Expected {root}/image_train/ and {root}/train_label.xml")
    text = label_file.read_bytes().decode("utf-8", errors="replace").replace('encoding="gb2312"', "")
    items = ET.fromstring(text).iter("Item")
    samples = [
        Sample(images / item.get("imageName"), int(item.get("vehicleID")), int(item.get("cameraID").lstrip("c")))
        for item in items
    ]
    if all((root / name).is_file() for name in CITYFLOW_LABELS):
        query, gallery = (official_cityflow_split(root, part) for part in ("query", "test"))
        return Split(relabel(samples), query, gallery, "CityFlowV2 (official query / test)", cameras=False)
    pids = sorted({s.pid for s in samples})
    held_out = set(random.Random(seed).sample(pids, len(pids) // 3))
    train = relabel([s for s in samples if s.pid not in held_out])
    query, gallery, seen = [], [], set()
    for sample in (s for s in samples if s.pid in held_out):
        if (sample.pid, sample.camid) not in seen and len(query) < query_fraction * len(samples):
            seen.add((sample.pid, sample.camid))
            query.append(sample)
        else:
            gallery.append(sample)
    return Split(
        train, query, gallery, "CityFlowV2 (no test labels given: a held-out third of the TRAINING identities)"
    )


def official_cityflow_split(root: Path, part: str) -> list[Sample]:
    """image_{part}/ in name_{part}.txt's order with the offline evaluation's labels. The camera becomes a
    per-image stand-in, because that evaluation treats no gallery image as junk."""
    import numpy as np

    names_file, folder = root / f"name_{part}.txt", _folder(root, f"image_{part}", "CityFlowV2 (AIC track 2)")
    labels_file = root / CITYFLOW_LABELS[part == "test"]
    if not names_file.is_file():
        raise UserInputError(f"{names_file}: missing; the labels in {labels_file.name} follow its order")
    names = names_file.read_text().split()
    try:
        labels = np.load(labels_file, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserInputError(f"{labels_file}: not a (camera id, vehicle id) array ({error})") from error
    if labels.ndim != 2 or labels.shape != (len(names), 2):
        raise UserInputError(
            f"{labels_file}: expected {len(names)} rows of (camera id, vehicle id), one per line of "
            f"{names_file.name}; found shape {labels.shape}"
        )
    return [
        Sample(folder / name, int(pid), index) for index, (name, (_, pid)) in enumerate(zip(names, labels, strict=True))
    ]


def read_vehicleid(root: str, test_size: int = 800, draw: int = 0) -> Split:
    """VehicleID: image/ + train_test_split/{train_list,test_list_800|1600|2400}.txt ("name pid" lines). One
    random image per test identity is the gallery, the rest are queries (draw `draw` of the 10 usual draws).
    There are no cameras: each image gets its own camera id so no match is junk."""
    root = Path(root)
    lists = root / "train_test_split"
    images = _folder(root, "image", "VehicleID")

    def read(name):
        path = lists / name
        if not path.is_file():
            raise UserInputError(
                f"{path}: missing. Expected {lists}/train_list.txt and test_list_{{800,1600,2400}}.txt"
            )
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        return [Sample(images / f"{name}.jpg", int(pid), index) for index, (name, pid) in enumerate(rows)]

    train = relabel(read("train_list.txt"))
    test = read(f"test_list_{test_size}.txt")
    by_pid: dict[int, list[Sample]] = {}
    for sample in test:
        by_pid.setdefault(sample.pid, []).append(sample)
    rng = random.Random(draw)
    gallery, query = [], []
    for pid in sorted(by_pid):
        chosen = rng.randrange(len(by_pid[pid]))
        gallery.append(by_pid[pid][chosen])
        query += [s for i, s in enumerate(by_pid[pid]) if i != chosen]
    return Split(train, query, gallery, f"VehicleID-{test_size} (draw {draw})", cameras=False)


def read_hf_dataset(name_or_path: str, revision: str | None = None) -> Split:
    """A `datasets` dataset with `image` + `vehicle_id` (+ `camera`): ours, or any other. `train` trains;
    `query` / `gallery` splits evaluate when present. `revision` (a tag such as `v1.0`, a branch or a commit)
    pins a Hub dataset, so a result names the exact data it came from."""
    import datasets
    from huggingface_hub.errors import RevisionNotFoundError

    shown = f"{name_or_path}@{revision}" if revision else name_or_path
    options = {}
    if revision is None and Path(name_or_path).is_dir():
        # datasets' cache knows a local folder by its name and card, not by its files: a Parquet file replaced by
        # another export would be read from the cache of the old one. A cache per content reads what is there.
        content = local_data_digest(Path(name_or_path))
        options["cache_dir"] = str(Path(datasets.config.HF_DATASETS_CACHE) / "vehicle-diff-by-content" / content[:16])
    try:
        data = datasets.load_dataset(name_or_path, revision=revision, **options)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError, RevisionNotFoundError) as error:
        raise UserInputError(f"{shown}: cannot be loaded as a dataset ({error})") from error
    except datasets.exceptions.DatasetGenerationError as error:  # a data file damaged behind an intact footer
        file, problem = unreadable_parquet(Path(name_or_path)) if options else (shown, str(error.__cause__ or error))
        problem = " ".join(problem.split())  # one line
        raise UserInputError(f"{file}: cannot be read ({problem}); export the dataset again") from None
    if "train" not in data or not {"image", "vehicle_id"} <= set(data["train"].column_names):
        raise UserInputError(f"{name_or_path}: needs a train split with `image` and `vehicle_id` columns")

    def samples(split):
        if split not in data:
            return []
        table = data[split]
        cameras = table["camera"] if "camera" in table.column_names else range(len(table))
        return [
            Sample((table, index), pid, cam)
            for index, (pid, cam) in enumerate(zip(table["vehicle_id"], cameras, strict=True))
        ]

    has_cameras = all("camera" in data[split].column_names for split in ("query", "gallery") if split in data)
    return Split(relabel(samples("train")), samples("query"), samples("gallery"), shown, cameras=has_cameras)


def local_data_digest(folder: Path) -> str:
    """sha256 of a local dataset folder's files, after checking that each Parquet file is whole: a truncated
    or damaged one is named here, in one line, instead of failing deep inside datasets (or, worse, being read
    from an old cache)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vehicle_diff.jobs import folder_digest

    for file in sorted(folder.rglob("*.parquet")):
        if any(part.startswith(".") for part in file.relative_to(folder).parts):
            continue
        try:
            pq.read_metadata(file)
        except (pa.ArrowException, OSError) as error:
            raise UserInputError(
                f"{file}: not a readable Parquet file ({error}); export the dataset again or restore the file"
            ) from None
    return folder_digest(folder)


def unreadable_parquet(folder: Path) -> tuple[Path, str]:
    """The first Parquet file under `folder` whose pages cannot be read, and why (only looked for once loading
    failed: reading every page on each start would double the I/O)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in sorted(folder.rglob("*.parquet")):
        try:
            pq.read_table(file)
        except (pa.ArrowException, OSError) as error:
            return file, str(error)
    return folder, "a data file is damaged"


def source_digest(spec: str | None) -> str | list | None:
    """What a data source holds, for fingerprints: the content of its files (a benchmark's root folder or a
    dataset folder), or the spec itself for a Hub dataset (its revision pinned in the spec)."""
    if not spec:
        return None
    kind, _, rest = spec.partition(":")
    if kind in ("veri776", "cityflow", "vehicleid"):
        root = Path(rest.rpartition(":")[0] if kind == "vehicleid" and rest.rpartition(":")[2].isdigit() else rest)
        if not root.is_dir():
            raise UserInputError(f"{spec}: {root} is not a folder")
        from vehicle_diff.jobs import folder_digest

        return [kind, folder_digest(root)]
    if Path(spec).is_dir():
        return ["folder", local_data_digest(Path(spec))]
    return spec


def relabel(samples: list[Sample], offset: int = 0) -> list[Sample]:
    """Identities as contiguous labels offset, offset+1, ... in order of first appearance."""
    mapping: dict[int, int] = {}
    for sample in samples:
        mapping.setdefault(sample.pid, offset + len(mapping))
    return [Sample(s.image, mapping[s.pid], s.camid) for s in samples]


def read_source(spec: str) -> Split:
    """`veri776:ROOT`, `cityflow:ROOT`, `vehicleid:ROOT[:800|1600|2400]`, or a datasets name / folder, with an
    optional `@REVISION` (`ORG/vehicle-diff@v1.0`) unless the whole spec is an existing path."""
    kind, _, rest = spec.partition(":")
    if kind == "veri776":
        return read_veri776(rest)
    if kind == "cityflow":
        return read_cityflow(rest)
    if kind == "vehicleid":
        root, _, size = rest.partition(":")
        return read_vehicleid(root, int(size or 800))
    if "@" in spec and not Path(spec).exists():
        name, _, revision = spec.rpartition("@")
        if not name or not revision:
            raise UserInputError(f"{spec}: expected NAME@REVISION (e.g. ORG/vehicle-diff@v1.0)")
        return read_hf_dataset(name, revision=revision)
    return read_hf_dataset(spec)


def subsample_synthetic(samples: list[Sample], max_images: int | None, seed: int) -> list[Sample]:
    """At most `max_images` of `samples`, spread evenly over identities (the paper trains on as many
    synthetic images as its baselines): seeded, dealt round-robin, two images per identity first so that
    every kept identity has a positive pair; when there are fewer than two images per identity to go round,
    fewer identities are kept (those with two or more images first). Dataset order is kept."""
    if max_images is None or max_images >= len(samples):
        return list(samples)
    if max_images < 1:
        raise UserInputError(f"--max_synthetic_images must be positive (got {max_images})")
    rng = random.Random(seed)
    by_identity: dict[int, list[int]] = {}
    for index, sample in enumerate(samples):
        by_identity.setdefault(sample.pid, []).append(index)
    identities = list(by_identity)
    rng.shuffle(identities)
    for identity in identities:
        rng.shuffle(by_identity[identity])
    order = [i for i in identities if len(by_identity[i]) >= 2] + [i for i in identities if len(by_identity[i]) < 2]
    taken, remaining, opened = dict.fromkeys(order, 0), max_images, 0
    for identity in order:  # first round: a pair each
        pair = min(2, len(by_identity[identity]))
        if pair > remaining:
            break
        taken[identity], remaining, opened = pair, remaining - pair, opened + 1
        if not remaining:
            break
    depth = 2
    while remaining:  # then one more each, in the same order
        grown = [i for i in order[:opened] if len(by_identity[i]) > depth][:remaining]
        if not grown:
            break
        for identity in grown:
            taken[identity] += 1
        remaining, depth = remaining - len(grown), depth + 1
    for identity in order[opened : opened + remaining]:  # only when every kept identity ran out: singles
        taken[identity] = 1
    chosen = sorted(index for identity in order for index in by_identity[identity][: taken[identity]])
    return [samples[index] for index in chosen]


def load_image(image):
    from PIL import Image

    if isinstance(image, tuple):  # (datasets table, row)
        table, index = image
        return table[index]["image"].convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as opened:
        return opened.convert("RGB")


def identity_groups(rng: random.Random, pool: dict, p: int, k: int):
    """Endless groups of p identities x k image indices, as fast-reid's identity sampler draws them: each
    identity's images are shuffled and handed out k at a time without replacement (an identity with fewer
    than k images repeats some); an identity with fewer than k images left sits out the rest of the round;
    a new round starts when fewer than p identities remain."""
    identities = sorted(pool)
    while True:
        queues: dict = {}
        available = list(identities)
        while len(available) >= p:
            group = []
            for identity in rng.sample(available, p):
                if identity not in queues:
                    images = list(pool[identity])
                    images += [rng.choice(images) for _ in range(k - len(images))]
                    rng.shuffle(images)
                    queues[identity] = images
                queue = queues[identity]
                group += queue[:k]
                del queue[:k]
                if len(queue) < k:
                    available.remove(identity)
            yield group


class IdentityBatchSampler:
    """P identities x K images per batch so every anchor has positives (circle loss needs them).

    Modes (paper Table II): `R`/`S`: one source; `D`: real and synthetic pooled, identities drawn at random;
    `B`: balanced, every batch a real mini-batch of P identities merged with a synthetic one of P identities
    (2 x P x K images; paper §III-D: "we merge two mini-batch samples from real and synthetic datasets as a new
    mini-batch"). An epoch is a pass over the images of the mode's pool (R: real, S: synthetic, D and B: both), as
    in fast-reid: num_images // batch size batches over all processes together, so an epoch of D and one of B
    train on the same number of images. Order depends only on (seed, epoch),
    drawn with the sampler's own generator; processes take batches in turn (rank, world); `skip` leaves out
    the batches of this epoch already trained (resume).
    """

    def __init__(
        self,
        labels: list[int],
        sources: list[str],
        *,
        p: int,
        k: int,
        mode: str,
        seed: int,
        rank: int = 0,
        world: int = 1,
        random_batches: bool = False,
    ):
        if mode not in ("R", "S", "D", "B"):
            raise UserInputError(f"--data_mode {mode!r}: use R, S, D or B")
        if random_batches and mode == "B":
            raise UserInputError("--sampler random draws from one pool; data mode B balances identities (use D)")
        if p < 1 or k < 1:
            raise UserInputError(f"--ids_per_batch and --images_per_id must be positive (got {p}, {k})")
        self.p, self.k, self.mode, self.seed, self.rank, self.world, self.epoch = p, k, mode, seed, rank, world, 0
        self.skip, self.random_batches = 0, random_batches
        self.by_identity: dict[str, dict[int, list[int]]] = {"real": {}, "synthetic": {}}
        for index, (label, source) in enumerate(zip(labels, sources, strict=True)):
            self.by_identity[source].setdefault(label, []).append(index)
        real, synthetic = self.by_identity["real"], self.by_identity["synthetic"]
        if mode == "B":
            for source, identities in (("real", real), ("synthetic", synthetic)):
                if len(identities) < p:
                    raise UserInputError(
                        f"data mode B: only {len(identities)} {source} identities, and every batch takes "
                        f"--ids_per_batch {p} of each source; lower --ids_per_batch"
                    )
        else:
            needed = {"R": ["real"], "S": ["synthetic"], "D": ["real", "synthetic"]}[mode]
            for source in needed:
                if not self.by_identity[source]:
                    raise UserInputError(f"data mode {mode}: no {source} images")
            pooled = sum(len(self.by_identity[source]) for source in needed)
            if pooled < p:
                raise UserInputError(
                    f"data mode {mode}: only {pooled} identities for --ids_per_batch {p}; lower --ids_per_batch"
                )
        sources_used = {"R": ["real"], "S": ["synthetic"]}.get(mode, ["real", "synthetic"])
        self.num_images = sum(len(v) for source in sources_used for v in self.by_identity[source].values())
        self.batch_size = p * k * (2 if mode == "B" else 1)
        self.steps_per_epoch = self.num_images // self.batch_size  # over all processes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This epoch's batches for all processes together."""
        rng = random.Random(f"{self.seed}/{self.epoch}")
        real, synthetic = self.by_identity["real"], self.by_identity["synthetic"]
        if self.mode == "B":
            real_groups = identity_groups(rng, real, self.p, self.k)
            synthetic_groups = identity_groups(rng, synthetic, self.p, self.k)
            return [next(real_groups) + next(synthetic_groups) for _ in range(self.steps_per_epoch)]
        if self.random_batches:  # the IDE baseline: shuffled images of the pool, no identity structure
            sources = {"R": ["real"], "S": ["synthetic"], "D": ["real", "synthetic"]}[self.mode]
            indices = sorted(i for source in sources for group in self.by_identity[source].values() for i in group)
            rng.shuffle(indices)
            size = self.p * self.k
            return [indices[start * size : (start + 1) * size] for start in range(self.steps_per_epoch)]
        pool = {}
        if self.mode in ("R", "D"):
            pool.update({("real", i): v for i, v in real.items()})
        if self.mode in ("S", "D"):
            pool.update({("synthetic", i): v for i, v in synthetic.items()})
        groups = identity_groups(rng, pool, self.p, self.k)
        return [next(groups) for _ in range(self.steps_per_epoch)]

    def __iter__(self):
        batches = self.batches()
        usable = len(batches) - len(batches) % self.world  # every process gets the same number of batches
        return iter(batches[self.rank : usable : self.world][self.skip :])

    def __len__(self):
        return self.steps_per_epoch // self.world
