"""Contact sheets: a grid of images with a caption under each, for looking at what a stage kept or rejected."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 14


def contact_sheet(images: list, labels: list[str] | None = None, *, title: str | None = None, columns: int = 8,
                  cell: int = 128) -> Image.Image:  # fmt: skip
    """Tiles (paths or PIL images) fitted into `cell` x `cell` squares, `columns` per row."""
    labels = labels or [""] * len(images)
    rows = max(1, -(-len(images) // columns))
    top = LABEL_HEIGHT + 4 if title else 0
    sheet = Image.new("RGB", (columns * cell, top + rows * (cell + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for index, (item, label) in enumerate(zip(images, labels, strict=True)):
        tile = _open(item) if isinstance(item, (str, Path)) else item.convert("RGB")
        tile.thumbnail((cell, cell))
        x, y = (index % columns) * cell, top + (index // columns) * (cell + LABEL_HEIGHT)
        sheet.paste(tile, (x + (cell - tile.width) // 2, y + (cell - tile.height) // 2))
        draw.text((x + 2, y + cell), label[: cell // 6], fill="black", font=font)
    return sheet


def _open(path) -> Image.Image:
    """The image, or a gray tile for a file that cannot be read (sheets of unreadable images still render)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError):
        return Image.new("RGB", (32, 32), "gray")
