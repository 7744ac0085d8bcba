import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from vehicle_diff.generation.catalog import CatalogError, Prototype, canonical_body_style, load_catalog, parse_row


def write_csv(path, text):
    path.write_text(text)
    return path


def test_multi_valued_body_style_becomes_one_prototype_per_style():
    row = {"brand": "Audi", "model": "A5", "year": 2012, "body_style": "Coupe, Convertible"}
    assert parse_row(row, "x") == [Prototype("Audi", "A5", 2012, "coupe"), Prototype("Audi", "A5", 2012, "convertible")]


def test_body_style_aliases_and_case():
    assert canonical_body_style("Van/Minivan") == "van"
    assert canonical_body_style(" SUV ") == "suv"
    assert canonical_body_style("Station  Wagon") == "wagon"
    assert canonical_body_style("hovercraft") is None


@pytest.mark.parametrize(
    "row, column, message",
    [
        ({"brand": "", "model": "A5", "year": 2012, "body_style": "coupe"}, "brand", "missing value"),
        ({"model": "A5", "year": 2012, "body_style": "coupe"}, "brand", "missing value"),
        ({"brand": "Audi", "model": "A5", "year": "20x2", "body_style": "coupe"}, "year", "not an integer"),
        ({"brand": "Audi", "model": "A5", "year": 2012.5, "body_style": "coupe"}, "year", "not an integer"),
        ({"brand": "Audi", "model": "A5", "year": 1700, "body_style": "coupe"}, "year", "outside"),
        ({"brand": "Audi", "model": "A5", "year": 3000, "body_style": "coupe"}, "year", "outside"),
        (
            {"brand": "Audi", "model": "A5", "year": 2012, "body_style": "hovercraft"},
            "body_style",
            "unknown body style",
        ),
    ],
)
def test_bad_rows_name_row_and_column(row, column, message):
    with pytest.raises(CatalogError) as error:
        parse_row(row, "cat.csv row 7")
    assert str(error.value).startswith("cat.csv row 7, column " + repr(column))
    assert message in str(error.value)


def test_csv_errors_name_file_and_row(tmp_path):
    path = write_csv(tmp_path / "cat.csv", "brand,model,year,body_style\nAudi,A5,2012,Coupe\nBMW,X5,abc,SUV\n")
    with pytest.raises(CatalogError, match=r"cat.csv row 2, column 'year': 'abc'"):
        load_catalog(path)


def test_duplicate_rows_are_errors_and_skip_invalid_reports_them(tmp_path):
    text = "brand,model,year,body_style\nAudi,A5,2012,Coupe\nBMW,X5,2010,SUV\naudi,a5,2012,coupe\n"
    path = write_csv(tmp_path / "cat.csv", text)
    with pytest.raises(CatalogError, match="row 3: duplicate of row 1"):
        load_catalog(path)
    prototypes, skipped = load_catalog(path, skip_invalid=True)
    assert prototypes == [Prototype("Audi", "A5", 2012, "coupe"), Prototype("BMW", "X5", 2010, "suv")]
    assert len(skipped) == 1 and "row 3" in skipped[0]


def test_missing_column_and_unsupported_type(tmp_path):
    with pytest.raises(CatalogError, match=r"missing column\(s\) \['body_style'\]"):
        load_catalog(write_csv(tmp_path / "cat.csv", "brand,model,year\nAudi,A5,2012\n"))
    with pytest.raises(CatalogError, match="unsupported file type '.xlsx'"):
        load_catalog(write_csv(tmp_path / "cat.xlsx", "x"))
    with pytest.raises(CatalogError, match="no such file"):
        load_catalog(tmp_path / "absent.csv")
    with pytest.raises(CatalogError, match="no valid rows"):
        load_catalog(write_csv(tmp_path / "empty.csv", "brand,model,year,body_style\n"))


def test_jsonl_and_parquet_read_the_same_catalog(tmp_path):
    rows = [
        {"brand": "Audi", "model": "A5", "year": 2012, "body_style": "Coupe"},
        {"brand": "Kia", "model": "Rio", "year": 2015, "body_style": "Sedan, Hatchback"},
    ]
    jsonl = tmp_path / "cat.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    parquet = tmp_path / "cat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    assert load_catalog(jsonl)[0] == load_catalog(parquet)[0]
    assert len(load_catalog(jsonl)[0]) == 3
    jsonl.write_text('{"brand": "Audi"\n')
    with pytest.raises(CatalogError, match="row 1: not valid JSON"):
        load_catalog(jsonl)


def test_builtin_catalog_is_faker_vehicle_with_its_two_bad_rows_reported():
    prototypes, skipped = load_catalog()
    assert len(prototypes) > 9581  # multi-valued categories add prototypes
    assert len({p.brand for p in prototypes}) == 62
    assert {p.year for p in prototypes} == set(range(1992, 2021))
    assert len(skipped) == 2 and all("SUV1992" in s or "SUV2020" in s for s in skipped)


HEADER = "brand,model,year,body_style\r\n"
ROWS = "Citroën,C4,2012,Hatchback\r\nŠkoda,Octavia,2015,Wagon\r\n"


def test_utf8_with_or_without_excels_byte_order_mark(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_bytes((HEADER + ROWS).encode("utf-8"))
    excel = tmp_path / "excel.csv"  # Excel's "CSV UTF-8": a BOM and CRLF line ends
    excel.write_bytes(b"\xef\xbb\xbf" + (HEADER + ROWS).encode("utf-8"))
    prototypes = load_catalog(excel)[0]
    assert prototypes == load_catalog(plain)[0]
    assert prototypes == [Prototype("Citroën", "C4", 2012, "hatchback"), Prototype("Škoda", "Octavia", 2015, "wagon")]
    jsonl = tmp_path / "cat.jsonl"
    jsonl.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps({"brand": "Škoda", "model": "Fabia", "year": 2010, "body_style": "hatchback"}).encode("utf-8")
    )
    assert load_catalog(jsonl)[0][0].brand == "Škoda"


@pytest.mark.parametrize(
    "encoding, message",
    [
        ("latin-1", r"not UTF-8 \(byte 0xeb on line 2; Latin-1 or Windows-1252 perhaps\); save it as UTF-8"),
        ("cp1252", r"not UTF-8 \(byte 0xeb on line 2"),
        ("utf-16", r"the file is UTF-16 .*; save it as UTF-8"),  # with its byte-order mark
        ("utf-16-le", r"NUL bytes, as UTF-16 text does; save it as UTF-8"),  # without one
    ],
)
def test_other_encodings_are_one_clear_error_naming_the_file(tmp_path, encoding, message):
    path = tmp_path / "catalog.csv"
    path.write_bytes((HEADER + ROWS.replace("Škoda", "Skoda")).encode(encoding))
    with pytest.raises(CatalogError, match=message) as error:
        load_catalog(path)
    assert str(error.value).startswith(f"catalog {path}: ") and "\n" not in str(error.value)


def test_semicolon_separated_csv_gets_a_hint(tmp_path):
    path = write_csv(tmp_path / "cat.csv", "brand;model;year;body_style\nAudi;A5;2012;Coupe\n")
    with pytest.raises(CatalogError, match="looks ';'-separated"):
        load_catalog(path)


def test_keys_are_short_enough_for_file_names_however_long_the_names(tmp_path):
    from vehicle_diff.generation.catalog import MAX_KEY_BYTES, slug
    from vehicle_diff.generation.prompts import identity_key

    assert slug(2012, "Audi", "A5", "Coupe") == "2012-audi-a5-coupe"  # short keys are unchanged
    brand = "Bentley " + "Continental " * 25  # 308 characters
    text = HEADER + f"{brand},GT,2012,Coupe\r\n{brand},GTC,2012,Coupe\r\nŽ{'ž' * 300},X,2012,Coupe\r\n"
    prototypes = load_catalog(write_csv(tmp_path / "cat.csv", text))[0]  # different endings: not duplicates
    keys = [identity_key(color, p) for p in prototypes for color in ("red", "blue")]
    assert len(set(keys)) == 6 and keys == [identity_key(c, p) for p in prototypes for c in ("red", "blue")]
    assert all(len(key.encode("utf-8")) <= MAX_KEY_BYTES for key in keys + [p.key for p in prototypes])
    assert keys[0].startswith("red-2012-bentley-continental-continental-") and not keys[0].endswith("-")
    assert len(keys[0].encode()) == MAX_KEY_BYTES and keys[-1].startswith("blue-2012-žžž")
    for key in keys:  # the generate stage's layout: images/{identity}/{image_id}.png
        folder = tmp_path / "images" / key
        folder.mkdir(parents=True)
        (folder / f"{key}-0029.png").write_bytes(b"")
    assert slug("Citroe\u0308n") == slug("Citro\u00ebn") == "citroën"  # one key for either Unicode spelling
