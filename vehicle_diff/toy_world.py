"""A rendered vehicle world with ground truth: the `toy` preset's data.

Vehicles follow the prompt library's attributes: the body style sets the silhouette, the color the paint, and the
brand / model / year a stable set of details (wheel spokes and rims, stripes, window tint, lights, roof rack, a
badge), so that identities of one model and color still differ only in details, as real ones do; each individual
vehicle also carries a mark of its own (a sticker). They are seen from four viewpoints (left, right, front, rear)
through camera domains (sky and road, lighting, color cast, haze, blur, noise, scale, occlusion).

Everything is a pure function of its arguments and an explicit seed: the same call draws the same pixels.
`source` domains are plain daylight (what a base text-to-image model is trained on); `TARGET_CAMERAS` look like
nothing the source shows (what a LoRA must learn from a few unlabeled images).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import UserInputError
from .jobs import replace_folder

WORLD_VERSION = 1  # bump when a change to the renderer changes pixels: cached worlds are then rebuilt

# Paint of every color name the prompt library uses (VeRi-776's ten and the paper's examples).
PAINT = {
    "yellow": (232, 200, 30),
    "orange": (236, 120, 24),
    "green": (40, 150, 60),
    "gray": (128, 128, 132),
    "red": (200, 30, 30),
    "blue": (30, 70, 190),
    "white": (236, 236, 236),
    "golden": (196, 160, 72),
    "brown": (110, 70, 40),
    "black": (24, 24, 26),
}
VIEWS = ("left", "right", "front", "rear")
RIMS = [(192, 192, 196), (40, 40, 44), (200, 170, 60), (150, 110, 80)]
TINTS = [(40, 48, 60), (70, 100, 130), (150, 170, 185), (30, 30, 30)]
BADGE_SHAPES = ("circle", "diamond", "square", "bar")
SPOKES = [0, 3, 4, 5, 6]  # 0: hubcap
STRIPES = [0, 1, 2]  # along the side


@dataclass(frozen=True)
class BodyShape:
    """A side silhouette in units of the vehicle's length (x) and height (y, from the ground)."""

    length: float  # relative to a sedan
    height: float  # relative to the length
    belt: float  # beltline, as a fraction of the height
    cabin: tuple[float, float, float, float]  # windshield foot, roof front, roof back, rear window foot (x)
    roof: bool = True
    cargo: float = 0.0  # x where a pickup's open bed or a truck's box starts (0: none)


BODY_SHAPES = {
    "sedan": BodyShape(1.0, 0.30, 0.55, (0.28, 0.40, 0.66, 0.80)),
    "coupe": BodyShape(0.95, 0.28, 0.55, (0.30, 0.44, 0.60, 0.82)),
    "convertible": BodyShape(0.95, 0.26, 0.62, (0.32, 0.40, 0.60, 0.70), roof=False),
    "hatchback": BodyShape(0.85, 0.34, 0.55, (0.30, 0.42, 0.86, 0.97)),
    "wagon": BodyShape(1.0, 0.32, 0.55, (0.28, 0.40, 0.92, 0.97)),
    "suv": BodyShape(1.0, 0.44, 0.55, (0.25, 0.34, 0.93, 0.97)),
    "mpv": BodyShape(0.95, 0.45, 0.50, (0.18, 0.32, 0.94, 0.97)),
    "van": BodyShape(1.0, 0.52, 0.50, (0.10, 0.22, 0.98, 1.0)),
    "pickup": BodyShape(1.05, 0.40, 0.58, (0.25, 0.33, 0.52, 0.56), cargo=0.56),
    "bus": BodyShape(1.6, 0.42, 0.40, (0.01, 0.02, 0.99, 1.0)),
    "truck": BodyShape(1.4, 0.48, 0.50, (0.05, 0.10, 0.24, 0.27), cargo=0.29),
}


def stable_rng(*parts) -> random.Random:
    """A generator seeded by the text of `parts` (not Python's salted hash): the same everywhere, every run."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class Look:
    """Everything that decides how one vehicle looks, whatever the camera."""

    body_style: str
    paint: tuple[int, int, int]
    spokes: int  # 0: hubcap
    rim: tuple[int, int, int]
    stripes: int  # 0, 1 or 2 along the side
    stripe_color: tuple[int, int, int]
    tint: tuple[int, int, int]
    round_lights: bool
    roof_rack: bool
    badge_shape: str
    badge_color: tuple[int, int, int]
    sticker: tuple[float, float, tuple[int, int, int]] | None = None  # the individual's own mark: x, y, color


def contrast_color(paint: tuple[int, int, int]) -> tuple[int, int, int]:
    return (20, 20, 20) if sum(paint) > 384 else (235, 235, 235)


def vehicle_look(
    *, color: str, brand: str, model: str, year: int, body_style: str, individual: int | None = None
) -> Look:
    """The brand sets the badge, the model the wheels and stripes, the year the lights and tint; `individual`
    (an instance of that model in that color) adds a sticker of its own."""
    if color not in PAINT:
        raise ValueError(f"color {color!r} has no paint in the toy world; known: {', '.join(PAINT)}")
    if body_style not in BODY_SHAPES:
        raise ValueError(f"body style {body_style!r} has no shape in the toy world; known: {', '.join(BODY_SHAPES)}")
    by_brand, by_model, by_year = stable_rng("brand", brand), stable_rng("model", brand, model), stable_rng(year)
    paint = PAINT[color]
    sticker = None
    if individual is not None:
        mine = stable_rng("individual", color, brand, model, year, body_style, individual)
        sticker = (mine.uniform(0.15, 0.8), mine.uniform(0.15, 0.45), tuple(mine.randrange(256) for _ in range(3)))
    return Look(
        body_style=body_style,
        paint=paint,
        spokes=by_model.choice(SPOKES),
        rim=by_model.choice(RIMS),
        stripes=by_model.choice([0, *STRIPES]),  # half of the models without
        stripe_color=contrast_color(paint),
        tint=by_year.choice(TINTS),
        round_lights=by_year.random() < 0.5,
        roof_rack=by_model.random() < 0.3,
        badge_shape=by_brand.choice(BADGE_SHAPES),
        badge_color=tuple(by_brand.randrange(40, 256) for _ in range(3)),
        sticker=sticker,
    )


@dataclass(frozen=True)
class Domain:
    """How a camera sees: its scene, light and optics."""

    name: str
    sky: tuple[int, int, int]
    road: tuple[int, int, int]
    gain: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    haze: float = 0.0  # blend toward the sky color
    blur: float = 0.0  # Gaussian radius in pixels at 128 px
    noise: float = 0.0  # pixel noise sigma
    scale: tuple[float, float] = (0.55, 0.8)  # vehicle length as a fraction of the frame width
    occlusion: float = 0.0  # chance of a pole or sign in front of the vehicle
    views: tuple[str, ...] = VIEWS


SOURCE_DOMAINS = (
    Domain("day-street", sky=(170, 200, 230), road=(110, 110, 112)),
    Domain("day-highway", sky=(190, 210, 235), road=(125, 122, 118), scale=(0.45, 0.7)),
    Domain("day-lot", sky=(200, 205, 210), road=(150, 150, 145), scale=(0.6, 0.85)),
)
TARGET_CAMERAS = (
    Domain("c001-sodium-dusk", sky=(60, 40, 50), road=(50, 45, 40), gain=0.85, cast=(1.2, 0.95, 0.6), blur=0.6),
    Domain("c002-fog", sky=(185, 190, 195), road=(120, 122, 125), haze=0.45, blur=1.0, scale=(0.45, 0.65)),
    Domain("c003-night-ir", sky=(20, 25, 20), road=(35, 40, 35), gain=0.6, cast=(0.8, 1.1, 0.8), noise=14.0),
    Domain("c004-tunnel", sky=(70, 80, 50), road=(60, 62, 50), cast=(1.05, 1.1, 0.75), occlusion=0.5, blur=0.4),
    Domain("c005-overhead-noon", sky=(225, 225, 215), road=(160, 155, 140), gain=1.15, views=("front", "rear")),
    Domain("c006-rain", sky=(90, 100, 115), road=(55, 60, 70), cast=(0.9, 0.95, 1.15), blur=1.4, noise=6.0),
)

CAMERA_SETS = {"target": TARGET_CAMERAS, "source": SOURCE_DOMAINS}


@dataclass
class Render:
    image: Image.Image
    box: tuple[int, int, int, int]  # the vehicle's pixels, x0, y0, x1, y1 (before occlusion)
    view: str
    domain: str
    info: dict = field(default_factory=dict)


def _side(draw: ImageDraw.ImageDraw, look: Look, x0: float, ground: float, length: float) -> tuple:
    """A side view facing left, drawn at `x0`..`x0 + length`, wheels on `ground`; returns its box."""
    shape = BODY_SHAPES[look.body_style]
    height = length * shape.height / shape.length
    wheel = height * (0.22 if shape.length < 1.3 else 0.17)
    bottom, belt, top = ground - wheel * 0.9, ground - height * shape.belt, ground - height

    def x(fraction):
        return x0 + fraction * length

    foot, roof0, roof1, rear = shape.cabin
    body = [(x(0), bottom), (x(0), belt + height * 0.08), (x(0.04), belt), (x(1), belt), (x(1), bottom)]
    draw.polygon(body, fill=look.paint)
    if shape.cargo and look.body_style == "truck":
        draw.rectangle([x(shape.cargo), top, x(1), belt], fill=tuple(min(255, c + 30) for c in look.paint))
    elif shape.cargo:
        draw.rectangle([x(shape.cargo), belt - height * 0.08, x(1), belt], fill=look.paint)
    if shape.roof:
        draw.polygon([(x(foot), belt), (x(roof0), top), (x(roof1), top), (x(rear), belt)], fill=look.paint)
        inset = 0.1 * (belt - top)
        glass = [(x(foot) + inset, belt - 1), (x(roof0) + inset * 0.6, top + inset),
                 (x(roof1) - inset * 0.6, top + inset), (x(rear) - inset, belt - 1)]  # fmt: skip
        draw.polygon(glass, fill=look.tint)
        pillar = x((roof0 + roof1) / 2)
        draw.line([(pillar, top + inset), (pillar, belt)], fill=look.paint, width=max(1, int(length * 0.015)))
        if look.roof_rack:
            draw.rectangle(
                [x(roof0 + 0.03), top - height * 0.05, x(roof1 - 0.03), top - height * 0.02], fill=(30, 30, 30)
            )
    else:  # a convertible: a windshield and a low seat back
        draw.line(
            [(x(foot), belt), (x(roof0), top + (belt - top) * 0.4)], fill=look.tint, width=max(1, int(length * 0.02))
        )
    for stripe in range(look.stripes):
        y = belt + (bottom - belt) * (0.35 + 0.25 * stripe)
        draw.rectangle([x(0.02), y, x(0.98), y + height * 0.025], fill=look.stripe_color)
    light = [x(0), belt + height * 0.05, x(0.05), belt + height * 0.14]
    (draw.ellipse if look.round_lights else draw.rectangle)(light, fill=(250, 245, 200))
    draw.rectangle([x(0.96), belt + height * 0.05, x(1), belt + height * 0.13], fill=(200, 20, 20))
    _badge(draw, look, x(0.08), belt + (bottom - belt) * 0.3, height * 0.06)
    if look.sticker:
        sx, sy, color = look.sticker
        size = height * 0.07
        draw.rectangle(
            [x(sx), belt + (bottom - belt) * sy, x(sx) + size, belt + (bottom - belt) * sy + size], fill=color
        )
    axles = {"bus": (0.14, 0.84), "truck": (0.12, 0.74, 0.88)}.get(look.body_style, (0.17, 0.83))
    for axle in axles:
        _wheel(draw, look, x(axle), ground - wheel, wheel)
    if not shape.roof:  # the windshield is the highest point
        top = top + (belt - top) * 0.4
    return x0, top - (height * 0.05 if look.roof_rack else 0), x0 + length, ground


def _end(draw: ImageDraw.ImageDraw, look: Look, cx: float, ground: float, length: float, front: bool) -> tuple:
    """A front or rear view centred on `cx`."""
    shape = BODY_SHAPES[look.body_style]
    height = length * shape.height / shape.length
    width = length * (0.42 if shape.length < 1.3 else 0.32)
    half = width / 2
    bottom, belt, top = ground - height * 0.1, ground - height * shape.belt, ground - height
    draw.rectangle([cx - half, belt, cx + half, bottom], fill=look.paint)
    if shape.roof or look.body_style == "truck":
        draw.polygon(
            [(cx - half, belt), (cx - half * 0.8, top), (cx + half * 0.8, top), (cx + half, belt)], fill=look.paint
        )
        inset = 0.12 * (belt - top)
        draw.polygon([(cx - half * 0.9, belt - 1), (cx - half * 0.75, top + inset), (cx + half * 0.75, top + inset),
                      (cx + half * 0.9, belt - 1)], fill=look.tint)  # fmt: skip
        if look.roof_rack:
            draw.rectangle(
                [cx - half * 0.7, top - height * 0.05, cx + half * 0.7, top - height * 0.02], fill=(30, 30, 30)
            )
    light_color = (250, 245, 200) if front else (210, 20, 20)
    for side in (-1, 1):
        box = [cx + side * half * 0.88 - half * 0.12, belt + height * 0.06, cx + side * half * 0.88 + half * 0.12,
               belt + height * 0.16]  # fmt: skip
        (draw.ellipse if look.round_lights else draw.rectangle)(sorted_box(box), fill=light_color)
        draw.rectangle(sorted_box([cx + side * half * 0.95, bottom, cx + side * half * 0.7, ground]), fill=(20, 20, 20))
    for stripe in range(look.stripes):  # stripes run over the hood / trunk lid
        offset = (stripe - (look.stripes - 1) / 2) * half * 0.25
        draw.rectangle([cx + offset - half * 0.06, belt, cx + offset + half * 0.06, bottom], fill=look.stripe_color)
    draw.rectangle(
        [cx - half * 0.25, bottom - height * 0.12, cx + half * 0.25, bottom - height * 0.04], fill=(240, 240, 230)
    )
    if front:
        _badge(draw, look, cx, belt + height * 0.1, height * 0.06)
    elif look.sticker:  # the individual's mark shows on the rear window
        sx, _, color = look.sticker
        size = height * 0.07
        draw.rectangle([cx - half * 0.6 + sx * half, top + (belt - top) * 0.55, cx - half * 0.6 + sx * half + size,
                        top + (belt - top) * 0.55 + size], fill=color)  # fmt: skip
    return cx - half, top - (height * 0.05 if look.roof_rack else 0), cx + half, ground


def sorted_box(box):
    x0, y0, x1, y1 = box
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


def _badge(draw, look: Look, cx: float, cy: float, size: float) -> None:
    box = [cx - size, cy - size, cx + size, cy + size]
    if look.badge_shape == "circle":
        draw.ellipse(box, fill=look.badge_color)
    elif look.badge_shape == "diamond":
        draw.polygon([(cx, cy - size), (cx + size, cy), (cx, cy + size), (cx - size, cy)], fill=look.badge_color)
    elif look.badge_shape == "square":
        draw.rectangle(box, fill=look.badge_color)
    else:
        draw.rectangle([cx - 2 * size, cy - size / 2, cx + 2 * size, cy + size / 2], fill=look.badge_color)


def _wheel(draw, look: Look, cx: float, cy: float, radius: float) -> None:
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(18, 18, 18))
    rim = radius * 0.6
    draw.ellipse([cx - rim, cy - rim, cx + rim, cy + rim], fill=look.rim)
    for spoke in range(look.spokes):
        angle = 2 * np.pi * spoke / look.spokes
        draw.line([(cx, cy), (cx + rim * np.cos(angle), cy + rim * np.sin(angle))], fill=(18, 18, 18),
                  width=max(1, int(radius * 0.15)))  # fmt: skip


SUPERSAMPLE = 3


def render(
    look: Look, domain: Domain, *, size: tuple[int, int] = (128, 96), seed: int = 0, view: str | None = None
) -> Render:
    """One frame of `look` seen by `domain`; the seed picks the view (unless given), placement and noise."""
    rng = stable_rng("render", seed, domain.name)
    view = view or rng.choice(domain.views)
    width, height = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    horizon = height * rng.uniform(0.35, 0.5)
    canvas = Image.new("RGB", (width, height), domain.sky)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, horizon, width, height], fill=domain.road)
    for _ in range(rng.randrange(0, 4)):  # buildings and trees: clutter the detector must learn to ignore
        x0, w = rng.uniform(0, width), rng.uniform(0.05, 0.2) * width
        tone = tuple(int(c * rng.uniform(0.5, 0.9)) for c in domain.sky)
        draw.rectangle([x0, horizon - rng.uniform(0.1, 0.3) * height, x0 + w, horizon], fill=tone)
    draw.line(
        [(0, height * 0.92), (width, height * 0.92)],
        fill=tuple(min(255, c + 60) for c in domain.road),
        width=SUPERSAMPLE,
    )
    length = width * rng.uniform(*domain.scale) * (0.85 if BODY_SHAPES[look.body_style].length > 1.3 else 1.0)
    ground = height * rng.uniform(0.8, 0.95)
    if view in ("left", "right"):
        x0 = rng.uniform(0.02 * width, width - length - 0.02 * width) if length < 0.96 * width else 0.02 * width
        box = _side(draw, look, x0, ground, length)
        if view == "right":
            canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            box = (width - box[2], box[1], width - box[0], box[3])
            draw = ImageDraw.Draw(canvas)
    else:
        end_length = length * 1.6
        cx = rng.uniform(0.35, 0.65) * width
        box = _end(draw, look, cx, ground, end_length, front=view == "front")
    occluded = rng.random() < domain.occlusion
    if occluded:  # a pole or a sign across part of the vehicle
        px = rng.uniform(box[0], box[2])
        draw.rectangle([px, 0, px + width * 0.04, height], fill=(60, 60, 60))
    image = canvas.resize(size, Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels * domain.gain * np.asarray(domain.cast, dtype=np.float32)
    pixels = pixels * (1 - domain.haze) + np.asarray(domain.sky, dtype=np.float32) * domain.haze
    if domain.noise:
        pixels = pixels + np.random.default_rng(stable_rng("noise", seed).getrandbits(32)).normal(
            0, domain.noise, pixels.shape
        )
    image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    if domain.blur:
        image = image.filter(ImageFilter.GaussianBlur(domain.blur * size[0] / 128))
    scaled = tuple(int(round(v / SUPERSAMPLE)) for v in box)
    scaled = (max(0, scaled[0]), max(0, scaled[1]), min(size[0], scaled[2]), min(size[1], scaled[3]))
    return Render(image, scaled, view, domain.name, {"occluded": occluded})


def crop(render_: Render, margin: float = 0.06) -> Image.Image:
    """The vehicle as a re-ID dataset shows it: its box and a small margin of the scene."""
    x0, y0, x1, y1 = render_.box
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    width, height = render_.image.size
    return render_.image.crop(
        (max(0, int(x0 - mx)), max(0, int(y0 - my)), min(width, int(x1 + mx + 1)), min(height, int(y1 + my + 1)))
    )


# -- the target dataset: VeRi-776's layout, seen by target cameras -------------------------------------------------

GROUND_TRUTH = "ground_truth.jsonl"  # what the world knows and the stages never read
WORLD_FILES = ["image_train/*.jpg", "image_query/*.jpg", "image_test/*.jpg", GROUND_TRUTH]


def sample_target_identities(count: int, seed: int) -> list[dict]:
    """`count` vehicles drawn from the prompt library's catalog and colors: attributes a prompt could ask for,
    each an individual (two vehicles of one model and color differ by their own mark, as in VeRi-776)."""
    from vehicle_diff.generation.catalog import load_catalog
    from vehicle_diff.generation.prompts import VERI776_COLORS

    prototypes, _ = load_catalog()
    rng = stable_rng("target-identities", seed)
    chosen = []
    for pid in range(1, count + 1):
        prototype = rng.choice(prototypes)
        chosen.append({"pid": pid, "color": rng.choice(VERI776_COLORS), **vars(prototype)})
    return chosen


def plan_sightings(identity: dict, cameras: tuple[Domain, ...], seed: int) -> list[tuple[int, int]]:
    """(camera index, frame) pairs: each vehicle passes 2..4 cameras, seen 1..3 times by each."""
    rng = stable_rng("sightings", seed, identity["pid"])
    seen_by = sorted(rng.sample(range(len(cameras)), rng.randint(2, min(4, len(cameras)))))
    frames = []
    for camera in seen_by:
        start = rng.randrange(10_000, 90_000)
        frames += [(camera, start + 25 * k) for k in range(rng.randint(1, 3))]
    return frames


def write_target_dataset(out_dir: Path, *, identities: int, seed: int, cameras=TARGET_CAMERAS, size=(128, 96)) -> dict:
    """`image_train/` (the first half of the vehicles), `image_test/` (the rest) and `image_query/` (one image
    of each test vehicle per camera, also in `image_test/`, as VeRi-776 ships them), named
    `VVVV_cCCC_FFFFFFFF_0.jpg`, plus the ground truth of every image."""
    from tqdm import tqdm

    for name in ("image_train", "image_query", "image_test"):
        (out_dir / name).mkdir(parents=True)
    people = sample_target_identities(identities, seed)
    test_from = identities // 2 + 1
    counts = {"image_train": 0, "image_query": 0, "image_test": 0}
    with open(out_dir / GROUND_TRUTH, "w") as truth:
        for identity in tqdm(people, desc="toy world: target cameras", unit="vehicle"):
            look = vehicle_look(
                color=identity["color"],
                brand=identity["brand"],
                model=identity["model"],
                year=identity["year"],
                body_style=identity["body_style"],
                individual=identity["pid"],
            )
            queried = set()
            for camera, frame in plan_sightings(identity, cameras, seed):
                shot = render(look, cameras[camera], size=size, seed=hash_seed(seed, identity["pid"], frame))
                name = f"{identity['pid']:04d}_c{camera + 1:03d}_{frame:08d}_0.jpg"
                folders = ["image_train"] if identity["pid"] < test_from else ["image_test"]
                if identity["pid"] >= test_from and camera not in queried:
                    queried.add(camera)
                    folders.append("image_query")
                image = crop(shot)
                for folder in folders:
                    image.save(out_dir / folder / name, quality=92)
                    counts[folder] += 1
                    record = {"image": f"{folder}/{name}", **identity, "camera": cameras[camera].name}
                    record.update(view=shot.view, box=list(shot.box), occluded=shot.info["occluded"])
                    truth.write(json.dumps(record, sort_keys=True) + "\n")
    return {"identities": identities, "train_identities": test_from - 1, **counts}


def hash_seed(*parts) -> int:
    return stable_rng("seed", *parts).getrandbits(31)


@dataclass
class ToyWorldConfig:
    """Render the toy world's dataset (VeRi-776 layout) through --cameras into --output_dir."""

    output_dir: str = "toy-world"
    identities: int = 60  # half train, half query/test, as VeRi-776 splits its vehicles
    seed: int = 0
    image_width: int = 128
    image_height: int = 96
    cameras: str = field(
        default="target",
        metadata={"help": "target (the six target cameras) or source (the daylight the toy zoo was trained on)"},
    )
    overwrite: bool = False  # replace an earlier world of other settings in --output_dir

    def __post_init__(self):
        from .config import check_ranges

        check_ranges(self, positive=("image_width", "image_height"))
        if self.cameras not in CAMERA_SETS:
            raise UserInputError(f"--cameras {self.cameras!r}: use one of {', '.join(CAMERA_SETS)}")
        if self.identities < 4:
            raise UserInputError(f"--identities {self.identities}: at least 4 (two to train, two to test)")


def world_components(config: ToyWorldConfig) -> dict:
    """What the rendered world depends on: a folder with other components is another world."""
    settings = {"identities": config.identities, "seed": config.seed, "size": [config.image_width, config.image_height]}
    if config.cameras != "target":  # worlds rendered before the choice existed are target worlds
        settings["cameras"] = config.cameras
    return {"settings": settings, "world_version": WORLD_VERSION}


def build_target_dataset(config: ToyWorldConfig) -> Path:
    out_dir = replace_folder(
        config.output_dir,
        "toy-world",
        world_components(config),
        lambda staging: write_target_dataset(
            staging,
            identities=config.identities,
            seed=config.seed,
            cameras=CAMERA_SETS[config.cameras],
            size=(config.image_width, config.image_height),
        ),
        owned=WORLD_FILES,
        overwrite=config.overwrite,
    )
    print(f"toy world target dataset: {out_dir} (use it as veri776:{out_dir})")
    return out_dir


def main(argv: list[str] | None = None) -> Path:
    from .config import parse_config

    return build_target_dataset(parse_config(ToyWorldConfig, "toy-world", argv))


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)


def paint_color(image: Image.Image, box: tuple[int, int, int, int]) -> str:
    """The paint a rendered vehicle shows: the nearest paint of most pixels in a patch of bare body panel (side
    views, wider than tall: between the wheels, below the windows; front and rear: below the lights, above the
    plate, across the bonnet). An oracle that needs no model, for measuring what a color check decides."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0, y1 - y0
    columns, rows = ((0.35, 0.65), (0.45, 0.8)) if width > 1.6 * height else ((0.15, 0.85), (0.64, 0.76))
    region = image.crop(
        (x0 + columns[0] * width, y0 + rows[0] * height, x0 + columns[1] * width, y0 + rows[1] * height)
    )
    pixels = np.asarray(region.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    palette = np.asarray(list(PAINT.values()), dtype=np.float32)
    nearest = ((pixels[:, None, :] - palette[None]) ** 2).sum(-1).argmin(1)
    return list(PAINT)[np.bincount(nearest, minlength=len(PAINT)).argmax()]


# -- the source world: what the toy zoo's base models are trained on --------------------------------------------

COCO_CAR, COCO_TRUCK = 2, 7  # the detector's classes, as in the real COCO checkpoint
TRUCK_STYLES = ("pickup", "truck", "bus")


def coco_class(body_style: str) -> int:
    return COCO_TRUCK if body_style in TRUCK_STYLES else COCO_CAR


@functools.cache
def catalog_prototypes() -> tuple:
    """The prompt library's default catalog, read once per process."""
    from vehicle_diff.generation.catalog import load_catalog

    return tuple(load_catalog()[0])


@dataclass
class SourceScene:
    render: Render
    identity: dict  # color, brand, model, year, body_style
    caption: str  # the prompt library's paper template, as `generate` will ask for it


def source_scene(index: int, *, seed: int, size: tuple[int, int] = (64, 64)) -> SourceScene:
    """Scene `index` of the generic source world: a catalog vehicle in one of the prompt library's colors, seen in
    plain daylight. A pure function of (index, seed, size), so any worker can draw any scene."""
    from vehicle_diff.generation.prompts import TEMPLATES, VERI776_COLORS, build_prompt

    rng = stable_rng("source", seed, index)
    prototype = rng.choice(catalog_prototypes())
    identity = {"color": rng.choice(VERI776_COLORS), **vars(prototype)}
    look = vehicle_look(**identity)
    shot = render(look, rng.choice(SOURCE_DOMAINS), size=size, seed=hash_seed("source", seed, index))
    return SourceScene(shot, identity, build_prompt(TEMPLATES["paper"], **identity))
