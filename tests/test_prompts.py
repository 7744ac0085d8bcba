import subprocess
import sys
from collections import Counter

import datasets
import pytest
from vehicle_diff.generation.catalog import Prototype, load_catalog
from vehicle_diff.generation.prompts import TEMPLATES, build_prompt, identity_key, main, round_robin, sample_identities

from vehicle_diff.errors import UserInputError

COLORS = ["red", "yellow", "green", "white", "black"]


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()[0]


def test_paper_template_renders_the_papers_sentence():
    prompt = build_prompt(TEMPLATES["paper"], color="red", year=2012, brand="Toyota", model="Camry", body_style="sedan")
    assert prompt == "a red 2012 Toyota Camry sedan driving down the road."
    assert "pickup truck" in build_prompt(
        TEMPLATES["photo"], color="red", year=1, brand="b", model="m", body_style="pickup"
    )


def test_round_robin_interleaves_until_all_are_exhausted():
    assert list(round_robin([[1, 2, 3], [], ["a"], ["x", "y"]])) == [1, "a", "x", 2, "y", 3]


def test_identities_are_distinct_deterministic_and_prefix_stable(catalog):
    first = sample_identities(catalog, COLORS, 2000, seed=0)
    assert len({identity_key(color, p) for p, color in first}) == 2000
    assert first == sample_identities(catalog, COLORS, 2000, seed=0)
    assert first != sample_identities(catalog, COLORS, 2000, seed=1)
    assert sample_identities(catalog, COLORS, 500, seed=0) == first[:500]


def test_sampling_is_stratified_over_brands_body_styles_and_colors(catalog):
    identities = sample_identities(catalog, COLORS, 620, seed=3)
    brands = Counter(p.brand for p, _ in identities)
    capacity = Counter(p.brand for p in catalog)
    assert len(brands) == 62
    small = {b for b in brands if capacity[b] * len(COLORS) < 10}  # e.g. Fisker: one prototype
    assert all(brands[b] == capacity[b] * len(COLORS) for b in small)  # small brands give all they have
    assert {brands[b] for b in brands if b not in small} <= {10, 11}  # the others share equally
    colors = Counter(color for _, color in identities)
    assert max(colors.values()) - min(colors.values()) <= 0.1 * 620 / len(COLORS)
    styles = Counter(p.body_style for p, _ in identities)
    assert len(styles) == 8  # all of faker-vehicle's body styles appear, not only the most common
    # the catalog's first rows would be one year: the sample spreads over many
    assert len({p.year for p, _ in identities}) > 20


def test_small_groups_give_way_to_large_ones_and_every_pair_is_reachable():
    prototypes = [
        Prototype("A", "a", 2000, "sedan"),
        Prototype("B", "b1", 2000, "suv"),
        Prototype("B", "b2", 2001, "suv"),
    ]
    everything = sample_identities(prototypes, ["red", "blue"], 6, seed=0)
    assert sorted((p.model, c) for p, c in everything) == sorted(
        (m, c) for m in ("a", "b1", "b2") for c in ("red", "blue")
    )
    with pytest.raises(UserInputError, match="3 prototypes x 2 colors = 6"):
        sample_identities(prototypes, ["red", "blue"], 7, seed=0)


def test_main_writes_a_loadable_library_summary_and_resolved_config(tmp_path):
    out = main(["--preset", "tiny", "--num_identities", "25", "--seed", "4", "--output_dir", str(tmp_path / "p")])
    library = datasets.load_dataset("parquet", data_files=str(out / "prompts.parquet"), split="train")
    assert library.num_rows == 25
    assert library["vehicle_id"] == list(range(25))
    assert set(library.column_names) >= {
        "identity",
        "color",
        "year",
        "brand",
        "model",
        "body_style",
        "template_id",
        "prompt",
    }
    row = library[0]
    assert row["prompt"] == build_prompt(
        TEMPLATES[row["template_id"]], **{k: row[k] for k in ("color", "year", "brand", "model", "body_style")}
    )
    assert "num_identities: 25" in (out / "config.yaml").read_text()
    assert (out / "summary.json").exists()
    again = main(["--preset", "tiny", "--num_identities", "25", "--seed", "4", "--output_dir", str(tmp_path / "q")])
    assert (again / "prompts.parquet").read_bytes() == (out / "prompts.parquet").read_bytes()


def test_user_catalog_and_colors_flow_through(tmp_path):
    catalog = tmp_path / "cat.csv"
    catalog.write_text("brand,model,year,body_style\nAudi,A5,2012,Coupe\nKia,Rio,2015,Sedan\n")
    out = main(
        [
            "--catalog",
            str(catalog),
            "--colors",
            "Red",
            "blue",
            "--num_identities",
            "4",
            "--output_dir",
            str(tmp_path / "p"),
        ]
    )
    library = datasets.Dataset.from_parquet(str(out / "prompts.parquet"))
    assert sorted(library["identity"]) == [
        "blue-2012-audi-a5-coupe",
        "blue-2015-kia-rio-sedan",
        "red-2012-audi-a5-coupe",
        "red-2015-kia-rio-sedan",
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num_identities", "0"], "--num_identities must be positive"),
        (["--template_id", "nope"], "--template_id 'nope': unknown"),
        (["--colors", "red", "Red"], "--colors must be distinct"),
        (["--preset", "nowhere.yaml"], "no such preset"),
    ],
)
def test_bad_flags_are_clear_errors(tmp_path, flags, message):
    with pytest.raises(UserInputError, match=message):
        main([*flags, "--output_dir", str(tmp_path / "p")])
    assert not (tmp_path / "p").exists()


def test_bad_presets_name_the_preset_and_key(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("prompts: [unclosed\n")
    with pytest.raises(UserInputError, match="not valid YAML"):
        main(["--preset", str(broken), "--output_dir", str(tmp_path / "p")])
    typo = tmp_path / "typo.yaml"
    typo.write_text("prompts:\n  num_identites: 5\n")
    with pytest.raises(UserInputError, match=r"section 'prompts': unknown key\(s\) \['num_identites'\]"):
        main(["--preset", str(typo), "--output_dir", str(tmp_path / "p")])
    wrong_type = tmp_path / "type.yaml"
    wrong_type.write_text("prompts:\n  num_identities: many\n")
    with pytest.raises(UserInputError, match=r"type.yaml.*invalid int value: 'many'"):
        main(["--preset", str(wrong_type), "--output_dir", str(tmp_path / "p")])


def test_flags_override_the_preset(tmp_path):
    out = main(["--preset", "paper", "--num_identities", "3", "--output_dir", str(tmp_path / "p")])
    assert datasets.Dataset.from_parquet(str(out / "prompts.parquet")).num_rows == 3


def test_command_line_exit_codes(tmp_path):
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "vehicle_diff.generation.prompts",
            "--preset",
            "tiny",
            "--output_dir",
            str(tmp_path / "p"),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "Prompt library: 8 identities" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "vehicle_diff.cli",
            "prompts",
            "--num_identities",
            "-1",
            "--output_dir",
            str(tmp_path / "q"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "vehicle-diff prompts: error: --num_identities must be positive (got -1)"
    unknown = subprocess.run([sys.executable, "-m", "vehicle_diff.cli", "nope"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown stage 'nope'" in unknown.stderr


@pytest.mark.parametrize("content", [b"not parquet at all, a text file", b"PAR1\x00\x01truncated"])
def test_a_corrupt_parquet_catalog_is_one_line(tmp_path, content):
    catalog = tmp_path / "catalog.parquet"
    catalog.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "vehicle_diff.cli", "prompts", "--preset", "tiny", "--catalog", str(catalog),
         "--output_dir", str(tmp_path / "p")],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert f"{catalog}: not a readable Parquet file" in result.stderr and not (tmp_path / "p").exists()


def test_a_users_hidden_temp_file_in_the_output_folder_is_never_deleted(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / ".draft.tmp").write_text("draft")
    with pytest.raises(UserInputError, match=r"not an output of `prompts` \(.draft.tmp\)"):
        main(["--preset", "tiny", "--output_dir", str(tmp_path / "mine")])
    assert (tmp_path / "mine" / ".draft.tmp").read_text() == "draft"
