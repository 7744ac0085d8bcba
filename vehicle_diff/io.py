"""Atomic writes: an output file exists whole or not at all, so a killed stage never leaves half a file."""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's host and PID are in the name, so a clean-up can tell a live writer's file from a dead one's
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}~{socket.gethostname()}~{os.getpid()}~", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def list_images(folder: str | Path, flag: str = "--input_images") -> list[Path]:
    """Every file with an image suffix under `folder`, recursively, in a stable order (hidden entries skipped)."""
    from .errors import UserInputError

    root = Path(folder)
    if not root.is_dir():
        raise UserInputError(f"{flag} {folder}: not a folder")
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


class ImageTooLarge(ValueError):
    """An image whose header claims more pixels than PIL's limit: a decompression bomb, or too big to decode."""


def open_rgb(source):
    """The image at `source` (a path or a binary file object) as RGB. An image over PIL's pixel limit
    (`PIL.Image.MAX_IMAGE_PIXELS`) raises `ImageTooLarge` before it is decoded: a 74-byte PNG can claim
    100000 x 100000 pixels, and decoding it would exhaust memory, so callers list it as unreadable, like a
    truncated file, instead of crashing on it at every re-run."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():  # PIL only warns between the limit and twice the limit
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageTooLarge(f"{error} PIL.Image.MAX_IMAGE_PIXELS sets the limit.") from None
    with image:
        return image.convert("RGB")
