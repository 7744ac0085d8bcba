"""Atomic writes: an output file exists whole or not at all, so a killed stage never leaves half a file."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

# `.NAME~HOST~PID~RANDOM.tmp`: the only temp files the job layer ever cleans up (never a user's `.draft.tmp`)
TEMP_NAME = re.compile(r"\.(?P<name>.+)~(?P<host>[^~/]+)~(?P<pid>\d+)~(?P<random>[a-z0-9_]+)\.tmp")

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


def read_parquet(path: str | Path, advice: str, columns: list[str] | None = None):
    """A Parquet file as a pyarrow Table, or one line naming the file when it is cut short or not Parquet at all
    (pyarrow's own message is a traceback from deep inside)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .errors import UserInputError

    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserInputError(f"{path}: not a readable Parquet file ({reason}); {advice}") from None


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def list_images(folder: str | Path, flag: str = "--input_images", exclude: str | Path | None = None) -> list[Path]:
    """Every file with an image suffix under `folder`, recursively, in a stable order (hidden entries skipped).
    `exclude`: the stage's own output folder when it lies inside `folder`; its outputs are not its input."""
    from .errors import UserInputError

    root = Path(folder)
    if not root.is_dir():
        raise UserInputError(f"{flag} {folder}: not a folder")
    own = Path(exclude).resolve() if exclude else None
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and not (own and p.resolve().is_relative_to(own))
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
