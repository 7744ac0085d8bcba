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


def read_cityflow(root: str, query_fraction: float = 0.2, seed: int = 0) -> Split:
    """CityFlowV2 (AI City Challenge track 2): image_train/ + train_label.xml. Its test labels are not public,
    so evaluation uses an identity-disjoint split of the training set: a seeded 1/3 of identities is held out,
    one image per (identity, camera) of it is a query (up to `query_fraction` of its images), the rest gallery."""
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
    return Split(train, query, gallery, "CityFlowV2 (local identity-disjoint split)")


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
    return Split(train, query, gallery, f"VehicleID-{test_size} (draw {draw})")


def read_hf_dataset(name_or_path: str, revision: str | None = None) -> Split:
    """A `datasets` dataset with `image` + `vehicle_id` (+ `camera`): ours, or any other. `train` trains;
    `query` / `gallery` splits evaluate when present."""
    import datasets

    try:
        data = datasets.load_dataset(name_or_path, revision=revision)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
        raise UserInputError(f"{name_or_path}: cannot be loaded as a dataset ({error})") from error
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

    return Split(relabel(samples("train")), samples("query"), samples("gallery"), str(name_or_path))


def relabel(samples: list[Sample], offset: int = 0) -> list[Sample]:
    """Identities as contiguous labels offset, offset+1, ... in order of first appearance."""
    mapping: dict[int, int] = {}
    for sample in samples:
        mapping.setdefault(sample.pid, offset + len(mapping))
    return [Sample(s.image, mapping[s.pid], s.camid) for s in samples]


def read_source(spec: str) -> Split:
    """`veri776:ROOT`, `cityflow:ROOT`, `vehicleid:ROOT[:800|1600|2400]`, or a datasets name / folder."""
    kind, _, rest = spec.partition(":")
    if kind == "veri776":
        return read_veri776(rest)
    if kind == "cityflow":
        return read_cityflow(rest)
    if kind == "vehicleid":
        root, _, size = rest.partition(":")
        return read_vehicleid(root, int(size or 800))
    return read_hf_dataset(spec)


def load_image(image):
    from PIL import Image

    if isinstance(image, tuple):  # (datasets table, row)
        table, index = image
        return table[index]["image"].convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as opened:
        return opened.convert("RGB")


class IdentityBatchSampler:
    """P identities x K images per batch so every anchor has positives (circle loss needs them).

    Modes (paper Table II): `R`/`S`: one source; `D`: real and synthetic pooled, identities drawn at random;
    `B`: balanced, every batch P/2 real and P/2 synthetic identities. An epoch visits each identity of the
    pool (in `B`: of the real side; synthetic identities are drawn as needed) once. Order depends only on
    (seed, epoch); processes take batches in turn (rank, world).
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
    ):
        if mode not in ("R", "S", "D", "B"):
            raise UserInputError(f"--data_mode {mode!r}: use R, S, D or B")
        if mode == "B" and p % 2:
            raise UserInputError(f"--ids_per_batch {p} must be even in balanced mode (half real, half synthetic)")
        self.p, self.k, self.mode, self.seed, self.rank, self.world, self.epoch = p, k, mode, seed, rank, world, 0
        self.skip = 0  # batches of this epoch already trained (set when resuming), not loaded again
        self.by_identity: dict[str, dict[int, list[int]]] = {"real": {}, "synthetic": {}}
        for index, (label, source) in enumerate(zip(labels, sources, strict=True)):
            self.by_identity[source].setdefault(label, []).append(index)
        needed = {"R": ["real"], "S": ["synthetic"], "D": ["real", "synthetic"], "B": ["real", "synthetic"]}[mode]
        for source in needed:
            if len(self.by_identity[source]) < (p // 2 if mode == "B" else p if mode != "D" else 1):
                raise UserInputError(f"data mode {mode}: only {len(self.by_identity[source])} {source} identities for "
                                     f"{p} identities per batch")  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _images(self, rng: random.Random, indices: list[int]) -> list[int]:
        if len(indices) >= self.k:
            return rng.sample(indices, self.k)
        return indices + [rng.choice(indices) for _ in range(self.k - len(indices))]

    def batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}/{self.epoch}")
        real, synthetic = self.by_identity["real"], self.by_identity["synthetic"]
        if self.mode in ("R", "S", "D"):
            pool = {**({} if self.mode == "S" else {("real", i): v for i, v in real.items()}),
                    **({} if self.mode == "R" else {("synthetic", i): v for i, v in synthetic.items()})}  # fmt: skip
            identities = sorted(pool)
            rng.shuffle(identities)
            groups = [identities[i : i + self.p] for i in range(0, len(identities) - self.p + 1, self.p)]
            return [[j for identity in group for j in self._images(rng, pool[identity])] for group in groups]
        half = self.p // 2
        real_ids, synthetic_ids = sorted(real), sorted(synthetic)
        rng.shuffle(real_ids)
        batches = []
        for start in range(0, len(real_ids) - half + 1, half):
            batch = [j for identity in real_ids[start : start + half] for j in self._images(rng, real[identity])]
            batch += [j for identity in rng.sample(synthetic_ids, half) for j in self._images(rng, synthetic[identity])]
            batches.append(batch)
        return batches

    def __iter__(self):
        batches = self.batches()
        usable = len(batches) - len(batches) % self.world  # every process gets the same number of batches
        return iter(batches[self.rank : usable : self.world][self.skip :])

    def __len__(self):
        return len(self.batches()) // self.world
