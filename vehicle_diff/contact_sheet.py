"""Contact sheets: a grid of images with a caption under each, for looking at what a stage kept or rejected.

Captions wrap onto as many lines as they need and are never cut: "blue Bentley Continental GT" is read whole,
and a tile can carry several facts, one per line (image id, prompt color -> predicted color, detection
confidence, reject reason). A file that cannot be read becomes a tile that says which file and why.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

PAD = 5  # pixels around each tile's picture and text
BORDER = 3  # width of a tile's colored border
UNREADABLE_BACKGROUND = (235, 228, 228)
UNREADABLE_TEXT = (150, 20, 20)


def contact_sheet(
    images: list,
    labels: list[str | list[str] | None] | None = None,
    *,
    title: str | None = None,
    columns: int = 8,
    cell: int = 128,
    borders: list | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """Tiles (paths or PIL images) fitted into `cell` x `cell` squares, `columns` per row, each with its
    label underneath. A label is a string (newlines start new lines) or a list of lines; long lines wrap.
    `borders` gives each tile a frame color (a PIL color name or RGB tuple; None for no frame), e.g. green
    for kept and red for rejected. `font_size` defaults to one that fits ~20 characters across a tile."""
    images = list(images)
    if columns < 1 or cell < 16:
        raise ValueError(f"columns must be >= 1 and cell >= 16 (got columns={columns}, cell={cell})")
    labels = [None] * len(images) if labels is None else list(labels)
    borders = [None] * len(images) if borders is None else list(borders)
    for name, values in (("labels", labels), ("borders", borders)):
        if len(values) != len(images):
            raise ValueError(f"{len(values)} {name} for {len(images)} images")
    font = label_font(font_size or max(10, cell // 11))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = _line_height(font)
    tile_width = cell + 2 * PAD
    captions = [wrap(_lines(label), font, cell, measure) for label in labels]
    caption_height = max((len(lines) for lines in captions), default=0) * line_height
    tile_height = cell + 2 * PAD + caption_height + (PAD if caption_height else 0)
    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    title_lines = wrap(_lines(title), font, columns * tile_width - 2 * PAD, measure)
    top = len(title_lines) * line_height + (2 * PAD if title_lines else 0)

    sheet = Image.new("RGB", (columns * tile_width, top + rows * tile_height), "white")
    draw = ImageDraw.Draw(sheet)
    for number, line in enumerate(title_lines):
        draw.text((PAD, PAD + number * line_height), line, fill="black", font=font)
    for index, (item, caption, border) in enumerate(zip(images, captions, borders, strict=True)):
        x, y = (index % columns) * tile_width, top + (index // columns) * tile_height
        sheet.paste(_tile(item, cell, font, measure), (x + PAD, y + PAD))
        for number, line in enumerate(caption):
            draw.text((x + PAD, y + cell + 2 * PAD + number * line_height), line, fill="black", font=font)
        if border is not None:
            draw.rectangle([x + 1, y + 1, x + tile_width - 2, y + tile_height - 2], outline=border, width=BORDER)
    return sheet


@functools.lru_cache(maxsize=8)
def label_font(size: int):
    """DejaVu Sans from matplotlib's own files (brands are written in many alphabets: Škoda, Citroën; PIL's
    built-in font has ASCII only), else PIL's built-in font. Nothing is downloaded."""
    try:
        import matplotlib

        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def wrap(lines: list[str], font, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """Greedy word wrap to `width` pixels; a word wider than a line is split between characters. Nothing is
    dropped: joining the result gives back every character of the input."""
    wrapped = []
    for line in lines:
        current = ""
        for word in line.split(" "):
            candidate = f"{current} {word}" if current else word
            if draw.textlength(candidate, font=font) <= width:
                current = candidate
                continue
            if current:
                wrapped.append(current)
            current = ""
            for char in word:  # the word alone may still be too wide
                if current and draw.textlength(current + char, font=font) > width:
                    wrapped.append(current)
                    current = ""
                current += char
        wrapped.append(current)
    return wrapped


def _lines(label) -> list[str]:
    if label is None or label == "":
        return []
    if isinstance(label, str):
        return label.split("\n")
    return [line for part in label for line in str(part).split("\n")]


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ágjy|")
    return bottom - min(top, 0) + 2


def _tile(item, cell: int, font, measure) -> Image.Image:
    """The picture fitted into the cell, centred on white; for an unreadable file, its name and the error."""
    if isinstance(item, (str, Path)):
        try:
            with Image.open(item) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return _unreadable_tile(Path(item), error, cell, font, measure)
    elif isinstance(item, Image.Image):
        image = item.convert("RGB")
    else:
        raise TypeError(f"contact_sheet: expected a path or a PIL image, got {type(item).__name__}")
    return ImageOps.pad(image, (cell, cell), color="white")


def _unreadable_tile(path: Path, error: Exception, cell: int, font, measure) -> Image.Image:
    tile = Image.new("RGB", (cell, cell), UNREADABLE_BACKGROUND)
    draw = ImageDraw.Draw(tile)
    reason = str(error).replace(str(path), path.name) or type(error).__name__
    lines = wrap(["unreadable:", path.name, reason], font, cell - 2 * PAD, measure)
    line_height = _line_height(font)
    fits = max(1, (cell - 2 * PAD) // line_height)
    if len(lines) > fits:  # the tile is only so big; the caption under it is never cut
        lines = lines[: fits - 1] + [lines[fits - 1][:-1] + "…"]
    for number, line in enumerate(lines):
        draw.text((PAD, PAD + number * line_height), line, fill=UNREADABLE_TEXT, font=font)
    draw.rectangle([0, 0, cell - 1, cell - 1], outline=UNREADABLE_TEXT, width=1)
    return tile
