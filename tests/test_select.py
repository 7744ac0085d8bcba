import json

import pytest
from vehicle_diff.generation.select import candidate_name, main, rank_candidates, sample_prompt_rows

from vehicle_diff.errors import UserInputError


def result(name, yield_, fd=None, text=0.2):
    return {"candidate": name, "yield": yield_, "fd_clip": fd, "clip_text_similarity": text}


def test_rank_prefers_the_closest_to_real_among_candidates_with_enough_yield():
    ranking = rank_candidates([result("a", 0.80, fd=5.0), result("b", 0.75, fd=2.0), result("c", 0.50, fd=0.5)], 0.9)
    assert [r["candidate"] for r in ranking] == ["b", "a", "c"]  # c is closest but its yield is too low


def test_rank_without_real_images_uses_yield_then_text_similarity():
    ranking = rank_candidates([result("a", 0.5, text=0.3), result("b", 0.7, text=0.1), result("c", 0.7, text=0.2)], 0.9)
    assert [r["candidate"] for r in ranking] == ["c", "b", "a"]


def test_prompt_sample_is_seeded_and_capped():
    assert sample_prompt_rows(100, 10, seed=0) == sample_prompt_rows(100, 10, seed=0)
    assert sample_prompt_rows(100, 10, seed=0) != sample_prompt_rows(100, 10, seed=1)
    assert sample_prompt_rows(4, 10, seed=0) == [0, 1, 2, 3]


def test_candidate_names():
    assert candidate_name("base", "paper", False) == "base"
    assert candidate_name("/x/lora-a/pytorch_lora_weights.safetensors", "photo", True) == "pytorch_lora_weights|photo"
    assert candidate_name("/x/lora-a", "photo", True) == "lora-a|photo"


def test_select_ranks_base_and_lora_on_the_same_prompts(tiny_prompts, tiny_generated, tiny_lora, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    for path in sorted((tiny_generated / "images").rglob("*-0000.png")):
        (real / path.name).write_bytes(path.read_bytes())
    out = main(
        [
            "--preset",
            "tiny",
            "--prompts",
            str(tiny_prompts),
            "--candidates",
            "base",
            str(tiny_lora),
            "--num_prompts",
            "3",
            "--real_images",
            str(real),
            "--output_dir",
            str(tmp_path / "select"),
        ]
    )
    ranking = json.loads((out / "ranking.json").read_text())["ranking"]
    assert {r["candidate"] for r in ranking} == {"base", tiny_lora.name}
    for r in ranking:
        assert r["images"] == 6 and 0 <= r["yield"] <= 1 and r["fd_clip"] is not None and r["fd_clip"] >= -1e-9
        assert (out / "contact_sheets" / f"{r['candidate']}.png").is_file()
    assert json.loads((out / "selected.json").read_text())["candidate"] == ranking[0]["candidate"]
    assert "| 1 |" in (out / "ranking.md").read_text()


def test_bad_candidates_and_real_images(tiny_prompts, tmp_path):
    with pytest.raises(UserInputError, match="no LoRA file"):
        main(
            [
                "--preset",
                "tiny",
                "--prompts",
                str(tiny_prompts),
                "--candidates",
                str(tmp_path / "nope"),
                "--output_dir",
                str(tmp_path / "s"),
            ]
        )
    with pytest.raises(UserInputError, match="need at least 2 images"):
        main(
            [
                "--preset",
                "tiny",
                "--prompts",
                str(tiny_prompts),
                "--real_images",
                str(tmp_path),
                "--output_dir",
                str(tmp_path / "s"),
            ]
        )
    with pytest.raises(UserInputError, match="--template_ids"):
        main(
            [
                "--preset",
                "tiny",
                "--prompts",
                str(tiny_prompts),
                "--template_ids",
                "nope",
                "--output_dir",
                str(tmp_path / "s"),
            ]
        )


def test_select_recognises_a_moved_run_folder_and_follows_overwrite(tiny_prompts, tiny_lora, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_prompts, run / "prompts")
    shutil.copytree(tiny_lora, run / "lora")

    def select(root, *flags):
        return main(
            [
                "--preset",
                "tiny",
                "--prompts",
                str(root / "prompts"),
                "--candidates",
                "base",
                str(root / "lora"),
                "--output_dir",
                str(root / "select"),
                *flags,
            ]
        )

    select(run, "--num_prompts", "2")
    moved = tmp_path / "moved"
    run.rename(moved)
    out = select(moved, "--num_prompts", "2")  # the same candidates by content: the same plan
    assert json.loads((out / "job.json").read_text())["components"]["candidates"][0] == "base"
    with pytest.raises(UserInputError, match="changed: settings.num_prompts: 2 -> 1"):
        select(moved, "--num_prompts", "1")
    select(moved, "--num_prompts", "1", "--overwrite")
    assert json.loads((out / "job.json").read_text())["components"]["settings"]["num_prompts"] == 1
