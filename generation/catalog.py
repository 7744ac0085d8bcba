"""The vehicle catalog (paper §III-A): prototypes of brand, car model, production year and body style.

The default catalog is the data shipped in the Apache-2.0 PyPI package `faker-vehicle` (9,581 rows, 62 makes,
1992-2020). A user catalog is a CSV, JSON Lines or Parquet file with the columns `brand`, `model`, `year`,
`body_style`. A row whose `body_style` lists several styles ("Sedan, Coupe") becomes one prototype per style.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from vehicle_diff.errors import UserInputError

COLUMNS = ("brand", "model", "year", "body_style")
FIRST_YEAR = 1886  # the first production automobile
# Keys become folder and file names (`images/{identity}/{identity}-0007.png`); 96 bytes leaves room for the
# suffixes within the 255-byte name limit of ext4, APFS, NTFS and most others.
MAX_KEY_BYTES = 96
KEY_HASH_CHARS = 12  # 48 bits: long keys that share a 83-byte prefix still differ

# Canonical body style -> the words used for it in a prompt. Covers faker-vehicle's categories and
# VeRi-776's vehicle types (sedan, suv, van, hatchback, mpv, pickup, bus, truck, estate).
BODY_STYLES = {
    "sedan": "sedan",
    "suv": "SUV",
    "pickup": "pickup truck",
    "coupe": "coupe",
    "van": "van",
    "convertible": "convertible",
    "hatchback": "hatchback",
    "wagon": "station wagon",
    "mpv": "MPV",
    "bus": "bus",
    "truck": "truck",
}
BODY_STYLE_ALIASES = {
    "van/minivan": "van",
    "minivan": "van",
    "pickup truck": "pickup",
    "estate": "wagon",
    "station wagon": "wagon",
    "sport utility vehicle": "suv",
}


@dataclass(frozen=True, order=True)
class Prototype:
    brand: str
    model: str
    year: int
    body_style: str  # a key of BODY_STYLES

    @property
    def key(self) -> str:
        """Stable, readable key: two rows with the same key are the same prototype."""
        return slug(self.year, self.brand, self.model, self.body_style)


class CatalogError(UserInputError):
    pass


def slug(*parts) -> str:
    """Lower-case words joined by '-': the readable, stable part of identity keys. At most MAX_KEY_BYTES of
    UTF-8, so that it is safe as a file name: a longer one keeps its start and ends in a hash of the whole,
    so it stays deterministic and distinct."""
    text = unicodedata.normalize("NFC", " ".join(str(part) for part in parts)).lower()
    key = "-".join("".join(ch if ch.isalnum() else " " for ch in text).split())
    encoded = key.encode("utf-8")
    if len(encoded) <= MAX_KEY_BYTES:
        return key
    digest = hashlib.sha256(encoded).hexdigest()[:KEY_HASH_CHARS]
    head = encoded[: MAX_KEY_BYTES - KEY_HASH_CHARS - 1].decode("utf-8", errors="ignore").rstrip("-")
    return f"{head}-{digest}"


def canonical_body_style(value: str) -> str | None:
    key = " ".join(value.strip().lower().split())
    key = BODY_STYLE_ALIASES.get(key, key)
    return key if key in BODY_STYLES else None


def parse_row(row: dict, where: str) -> list[Prototype]:
    """One catalog row -> its prototypes. `where` ("catalog.csv row 3") starts every error message."""
    for column in COLUMNS:
        value = row.get(column)
        if value is None or str(value).strip() == "":
            raise CatalogError(f"{where}, column {column!r}: missing value")
    year = row["year"]
    if isinstance(year, float) and year.is_integer():
        year = int(year)
    try:
        year = int(str(year).strip())
    except ValueError:
        raise CatalogError(f"{where}, column 'year': {row['year']!r} is not an integer year") from None
    last_year = dt.date.today().year + 1
    if not FIRST_YEAR <= year <= last_year:
        raise CatalogError(f"{where}, column 'year': {year} is outside {FIRST_YEAR}..{last_year}")
    prototypes = []
    for style in str(row["body_style"]).split(","):
        body_style = canonical_body_style(style)
        if body_style is None:
            raise CatalogError(
                f"{where}, column 'body_style': unknown body style {style.strip()!r}; "
                f"known: {', '.join(BODY_STYLES)} (aliases: {', '.join(BODY_STYLE_ALIASES)})"
            )
        prototypes.append(Prototype(str(row["brand"]).strip(), str(row["model"]).strip(), year, body_style))
    return prototypes


SAVE_AS_UTF8 = "save it as UTF-8 (in Excel: Save As > 'CSV UTF-8')"


def read_text(path: Path) -> str:
    """A text catalog's content: UTF-8, with or without the byte-order mark that Excel's "CSV UTF-8" writes.
    Any other encoding is refused rather than guessed at: a wrong guess would silently rename brands."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 (and UTF-32 LE) byte-order marks
        raise CatalogError(f"catalog {path}: the file is UTF-16 (Excel's 'Unicode Text'); {SAVE_AS_UTF8}")
    if b"\x00" in data[:4096]:
        raise CatalogError(f"catalog {path}: the file has NUL bytes, as UTF-16 text does; {SAVE_AS_UTF8}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise CatalogError(
            f"catalog {path}: not UTF-8 (byte 0x{data[error.start]:02x} on line {line}; Latin-1 or Windows-1252 "
            f"perhaps); {SAVE_AS_UTF8}"
        ) from None


def read_rows(path: Path):
    """Yield (row number, row dict) from a CSV, JSON Lines or Parquet catalog; row 1 is the first data row."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CatalogError(f"catalog {path}: no such file")
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            hint = "; the header looks ';'-separated: save it comma-separated" if ";" in "".join(header) else ""
            raise CatalogError(f"catalog {path}: missing column(s) {missing}; expected columns {list(COLUMNS)}{hint}")
        yield from enumerate(reader, start=1)
    elif suffix in (".jsonl", ".json"):
        with io.StringIO(read_text(path)) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CatalogError(f"catalog {path} row {number}: not valid JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise CatalogError(f"catalog {path} row {number}: expected a JSON object")
                yield number, row
    elif suffix == ".parquet":
        from vehicle_diff.io import read_parquet

        table = read_parquet(path, "give the catalog as a whole .parquet, .csv or .jsonl file")
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise CatalogError(f"catalog {path}: missing column(s) {missing}; expected columns {list(COLUMNS)}")
        yield from enumerate(table.select(list(COLUMNS)).to_pylist(), start=1)
    else:
        raise CatalogError(f"catalog {path}: unsupported file type {suffix!r}; use .csv, .jsonl or .parquet")


def faker_vehicle_rows():
    from faker_vehicle.vehicle_dict import vehicles

    for number, vehicle in enumerate(vehicles, start=1):
        row = {"brand": vehicle["Make"], "model": vehicle["Model"], "year": vehicle["Year"]}
        yield number, {**row, "body_style": vehicle["Category"]}


def load_catalog(path: str | Path | None = None, skip_invalid: bool = False) -> tuple[list[Prototype], list[str]]:
    """Validated, de-duplicated prototypes and the messages of the rows skipped (only with `skip_invalid`).

    The built-in catalog is always read with `skip_invalid`: faker-vehicle ships two rows whose category
    carries a year ("SUV1992"); they are reported, not guessed at.
    """
    if path is None:
        rows, name, skip_invalid = faker_vehicle_rows(), "faker-vehicle catalog", True
    else:
        path = Path(path)
        rows, name = read_rows(path), f"catalog {path}"
    seen: dict[str, tuple[int, Prototype]] = {}  # slug -> (row number, prototype)
    skipped: list[str] = []
    for number, row in rows:
        try:
            prototypes = parse_row(row, f"{name} row {number}")
            for prototype in prototypes:
                if prototype.key in seen:
                    raise CatalogError(
                        f"{name} row {number}: duplicate of row {seen[prototype.key][0]} ({prototype.key})"
                    )
        except CatalogError as error:
            if not skip_invalid:
                raise
            skipped.append(str(error))
            continue
        for prototype in prototypes:
            seen[prototype.key] = (number, prototype)
    if not seen:
        raise CatalogError(f"{name}: no valid rows")
    return [prototype for _, prototype in seen.values()], skipped
