"""Contact sheets and report plots: nothing cut, unreadable files shown as such, valid PNGs, bad input refused."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from vehicle_diff.contact_sheet import PAD, UNREADABLE_TEXT, contact_sheet, label_font, wrap
from vehicle_diff.plots import cmc_curves, color_confusion, training_curves

ROOT = Path(__file__).resolve().parents[1]
COLORS = ["yellow", "orange", "green", "gray", "red", "blue", "white", "golden", "brown", "black"]


def picture(color, size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_wrapped_labels_keep_every_word_and_fit_the_tile():
    font, draw = label_font(11), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label = "blue 2012 Bentley Continental GT Speed coupe"
    lines = wrap([label], font, 90, draw)
    assert len(lines) > 2 and " ".join(lines) == label
    assert all(draw.textlength(line, font=font) <= 90 for line in lines)
    word = "Supercalifragilisticexpialidocious"  # wider than a line: split between characters, not dropped
    assert "".join(wrap([word], font, 50, draw)) == word


def test_multi_line_captions_make_taller_tiles_and_are_drawn_whole():
    one = contact_sheet([picture("red")], ["kept"], cell=96)
    four = contact_sheet([picture("red")], [["img-0001\nred -> red (0.31)", "det 0.87", "kept"]], cell=96)
    assert four.width == one.width and four.height > one.height + 2 * 10
    long = contact_sheet([picture("red"), picture("blue")], ["a", "blue Bentley Continental GT " * 3], cell=64)
    caption = long.crop((0, 64 + 2 * PAD, long.width, long.height))  # everything under the pictures
    ink_rows = [
        y for y in range(caption.height) if min(caption.getpixel((x, y))[0] for x in range(caption.width)) < 128
    ]
    assert ink_rows and ink_rows[-1] - ink_rows[0] > 5 * 10  # six-odd lines of text, not one cut line


def test_old_call_signature_paths_and_images(tmp_path):
    path = tmp_path / "a.png"
    picture("green", (64, 64)).save(path)
    sheet = contact_sheet(
        [path, picture("red"), str(path)], ["x", "y", "z"], title="kept: 3 shown", columns=8, cell=128
    )
    assert sheet.width == 3 * (128 + 2 * PAD)  # three tiles: no empty columns
    assert sheet.getpixel((PAD + 64, sheet.height // 2 - 40))[1] > 100  # the green picture, scaled up
    assert contact_sheet([picture("red")] * 10, columns=4).width == 4 * (128 + 2 * PAD)
    assert contact_sheet([], title="nothing").size[0] > 0


def test_an_unreadable_file_shows_its_name_and_the_error(tmp_path):
    broken, missing = tmp_path / "broken.png", tmp_path / "missing.png"
    broken.write_bytes(b"not an image")
    sheet = contact_sheet([broken, missing], ["", ""], cell=128)
    tile_width = 128 + 2 * PAD
    first = sheet.crop((PAD, PAD, PAD + 128, PAD + 128))
    second = sheet.crop((tile_width + PAD, PAD, tile_width + PAD + 128, PAD + 128))
    dark_red = sum(1 for pixel in first.getdata() if pixel == UNREADABLE_TEXT)
    assert dark_red > 200  # text and an outline, not a blank grey tile
    assert first.tobytes() != second.tobytes()  # the name and the error differ, so does the tile


def test_borders_color_the_frame_only_where_asked():
    sheet = contact_sheet([picture("gray"), picture("gray")], ["kept", "rejected"], borders=[None, (200, 0, 0)])
    tile_width = 128 + 2 * PAD
    assert sheet.getpixel((2, sheet.height // 2)) == (255, 255, 255)
    assert sheet.getpixel((tile_width + 2, sheet.height // 2)) == (200, 0, 0)


def test_contact_sheet_refuses_mismatched_input():
    with pytest.raises(ValueError, match="1 labels for 2 images"):
        contact_sheet([picture("red")] * 2, ["a"])
    with pytest.raises(ValueError, match="3 borders for 2 images"):
        contact_sheet([picture("red")] * 2, borders=["red"] * 3)
    with pytest.raises(TypeError, match="expected a path or a PIL image, got int"):
        contact_sheet([3])
    with pytest.raises(ValueError, match="columns must be >= 1"):
        contact_sheet([picture("red")], columns=0)


def assert_png(path: Path, min_size=(300, 250), max_size=(2000, 2000)) -> Image.Image:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    image = Image.open(path)
    assert image.format == "PNG"
    assert min_size[0] <= image.width <= max_size[0] and min_size[1] <= image.height <= max_size[1], image.size
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20  # drawn, not a blank canvas
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically
    return image


def test_training_curves(tmp_path):
    steps = list(range(1, 201))
    losses = [2 * math.exp(-step / 50) + 0.1 * math.sin(step) for step in steps]
    losses[100] = float("nan")  # a diverged step is shown as missing, not refused
    rates = [1e-4 * min(1.0, step / 20) for step in steps]
    out = training_curves(steps, losses, rates, tmp_path / "plots" / "loss.png", title="LoRA fine-tuning")
    assert out == tmp_path / "plots" / "loss.png"
    assert_png(out)
    again = training_curves(steps, losses, rates, tmp_path / "again.png", title="LoRA fine-tuning")
    assert again.read_bytes() == out.read_bytes()  # same data, same file
    assert_png(training_curves([0, 4, 8], [1.0, 0.8, 0.9], [1e-4, 5e-5, 0.0], tmp_path / "short.png"))


@pytest.mark.parametrize(
    "steps, losses, rates, message",
    [
        ([], [], [], "no steps"),
        ([1, 2], [1.0], [1e-4, 1e-4], "2 steps, 1 losses and 2 learning rates"),
        ([2, 1], [1.0, 1.0], [1e-4, 1e-4], "steps must not decrease"),
        ([1, 2], [1.0, 1.0], [1e-4, -1e-4], "learning rate is negative"),
        ([1, 2], [1.0, "low"], [1e-4, 1e-4], r"losses\[1\]: 'low' is not a number"),
        ([1, float("inf")], [1.0, 1.0], [1e-4, 1e-4], r"steps\[1\]: inf is not finite"),
        ([1, 2], [1.0, 1.0], None, "learning_rates: expected a sequence of numbers"),
    ],
)
def test_training_curves_refuse_bad_input(tmp_path, steps, losses, rates, message):
    with pytest.raises(ValueError, match=message):
        training_curves(steps, losses, rates, tmp_path / "loss.png")
    assert not list(tmp_path.iterdir())


def test_color_confusion(tmp_path):
    prompt = [COLORS[i % 10] for i in range(300)]
    predicted = [c if i % 4 else COLORS[(i + 3) % 10] for i, c in enumerate(prompt)]
    predicted[:5] = [None] * 5  # no vehicle detected: no prediction
    assert_png(color_confusion(prompt, predicted, COLORS, tmp_path / "confusion.png"))
    with pytest.raises(ValueError, match=r"\['purple'\] not in colors"):
        color_confusion(["red", "purple"], ["red", "red"], COLORS, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="2 prompt colors for 1 predictions"):
        color_confusion(["red", "blue"], ["red"], COLORS, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="colors must be distinct"):
        color_confusion(["red"], ["red"], ["red", "red"], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_cmc_curves(tmp_path):
    def curve(rank1):
        values, value = [], rank1
        for _ in range(80):  # longer than 50: cut at rank 50
            values.append(value)
            value += (1 - value) * 0.1
        return values

    curves = {"plain": curve(0.6), "re-ranked": curve(0.66), "R+S": [0.7, 0.8, 0.9]}
    assert_png(cmc_curves(curves, tmp_path / "cmc.png", title="VeRi-776"))
    for bad, message in [
        ({}, "no curves"),
        ({"plain": []}, r"cmc_curves\['plain'\]: empty"),
        ({"plain": [62.0, 80.0]}, "fractions in \\[0, 1\\] \\(not percentages\\)"),
        ({"plain": [0.8, 0.6]}, "never decreases"),
        ({"plain": [0.5, None]}, r"cmc_curves\['plain'\]\[1\]: None is not a number"),
    ]:
        with pytest.raises(ValueError, match=message):
            cmc_curves(bad, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plots_need_no_display_and_leave_pyplot_alone(tmp_path):
    """With a GUI backend asked for and no display, the plots still render: they never go through pyplot."""
    script = (
        "import sys; from vehicle_diff.plots import cmc_curves\n"
        f"cmc_curves({{'plain': [0.5, 0.7]}}, {str(tmp_path / 'cmc.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {**os.environ, "MPLBACKEND": "TkAgg", "PYTHONPATH": str(ROOT)}
    env.pop("DISPLAY", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_png(tmp_path / "cmc.png")
