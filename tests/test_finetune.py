import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from vehicle_diff.training.finetune_lora import (
    CaptionedImages,
    augment,
    dropped_captions,
    lora_target_modules,
    main,
    warmup_steps,
)

from tests.conftest import launch_two_processes, run_killed_at
from vehicle_diff.errors import UserInputError
from vehicle_diff.io import sha256_file

UNET_UP = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


def test_lora_scopes():
    up = lora_target_modules("up_blocks")
    assert re.fullmatch(up, "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0")
    assert not re.fullmatch(up, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
    assert not re.fullmatch(up, "up_blocks.0.attentions.1.proj_in")
    assert lora_target_modules("all") == ["to_q", "to_k", "to_v", "to_out.0"]
    assert lora_target_modules(r".*mid_block.*to_q") == r".*mid_block.*to_q"
    with pytest.raises(UserInputError, match="not up_blocks, all, or a valid regular expression"):
        lora_target_modules("([")


def test_warmup_counts_epochs_like_the_paper_unless_steps_are_given():
    assert (
        warmup_steps(warmup_epochs=20, steps_per_epoch=378, explicit_steps=None) == 7560
    )  # 20 of 100 epochs on VeRi's 378
    assert warmup_steps(warmup_epochs=20, steps_per_epoch=378, explicit_steps=10) == 10


def test_augment_resizes_crops_and_records_micro_conditioning():
    import random

    image = Image.new("RGB", (200, 100), "red")
    pixels, time_ids = augment(image, resolution=64, center_crop=True, random_flip=False, rng=random.Random(0))
    assert pixels.shape == (3, 64, 64) and pixels.min() >= -1 and pixels.max() <= 1
    assert time_ids.tolist() == [100, 200, 0, 32, 64, 64]  # original (h, w), crop (top, left), target (h, w)
    _, random_ids = augment(image, resolution=64, center_crop=False, random_flip=True, rng=random.Random(3))
    assert random_ids[2] == 0 and 0 <= random_ids[3] <= 64


def test_augmentation_depends_on_seed_epoch_and_index_only(tiny_captions):
    import datasets

    data = datasets.load_dataset("imagefolder", data_dir=str(tiny_captions), split="train")

    def make():
        options = {"resolution": 32, "center_crop": False, "random_flip": True, "seed": 0}
        return CaptionedImages(data, image_column="image", caption_column="text", **options)

    a, b = make(), make()
    assert torch.equal(a[3]["time_ids"], b[3]["time_ids"]) and torch.equal(a[3]["pixel_values"], b[3]["pixel_values"])
    b.epoch = 1
    assert any(not torch.equal(a[i]["pixel_values"], b[i]["pixel_values"]) for i in range(len(data)))


def tiny_args(captions, out_dir, *extra):
    return ["--preset", "tiny", "--train_data_dir", str(captions), "--output_dir", str(out_dir), *extra]


def test_caption_dropout_depends_on_seed_epoch_and_image_only():
    images = list(range(2000))
    assert not any(dropped_captions(images, epoch=0, seed=0, share=0.0))
    dropped = dropped_captions(images, epoch=3, seed=0, share=0.1)
    assert 0.08 < sum(dropped) / len(images) < 0.12
    assert dropped_captions(images[5:9], epoch=3, seed=0, share=0.1) == dropped[5:9]  # batch-independent
    assert dropped != dropped_captions(images, epoch=4, seed=0, share=0.1)
    assert dropped != dropped_captions(images, epoch=3, seed=1, share=0.1)


def test_caption_dropout_trains_the_unconditional_branch(tiny_captions, tmp_path):
    """A dropped caption's conditioning is zeroed, so the LoRA learns something else from the same images."""
    flags = ["--max_train_steps", "6", "--validation_seeds", "0"]  # one epoch: 3 of its 6 captions are dropped
    plain = main(tiny_args(tiny_captions, tmp_path / "plain", *flags))
    dropout = main(tiny_args(tiny_captions, tmp_path / "dropout", *flags, "--caption_dropout", "0.5"))
    assert "0.5 of them dropped" in (dropout / "README.md").read_text()
    plain, dropout = (load_file(out / "pytorch_lora_weights.safetensors") for out in (plain, dropout))
    assert any(not torch.equal(plain[key], dropout[key]) for key in plain)


def test_finetune_writes_an_up_blocks_lora_that_stock_diffusers_loads(tiny_captions, tmp_path):
    out = main(tiny_args(tiny_captions, tmp_path / "lora"))
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    assert weights and all(key.startswith("unet.up_blocks.") for key in weights)
    assert f"{UNET_UP}.lora.down.weight" in weights and weights[f"{UNET_UP}.lora.down.weight"].shape[0] == 4

    from vehicle_diff.models import load_sdxl_pipeline

    pipe = load_sdxl_pipeline("tiny:sdxl")
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    assert pipe.get_list_adapters()["unet"]
    card = (out / "README.md").read_text()
    assert "template:sd-lora" in card and "rank 4" in card and "tiny:blip2" in card and "6 unlabeled images" in card
    header = card.split("---")[1]
    assert "base_model" not in header  # a local random model: nothing on the Hub to link
    assert (out / "validation.png").is_file()
    assert "black or non-finite images: 0" in card


def test_scope_all_and_text_encoder_training(tiny_captions, tmp_path):
    out = main(
        tiny_args(
            tiny_captions, tmp_path / "lora", "--lora_scope", "all", "--train_text_encoder", "--max_train_steps", "2"
        )
    )
    keys = load_file(out / "pytorch_lora_weights.safetensors").keys()
    assert any(k.startswith("unet.down_blocks.") for k in keys)
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("text_encoder_2.") for k in keys)


def test_cached_inputs_learn_what_encoding_every_step_learns(tiny_captions, tmp_path):
    """Within the first epoch (whose augmentation the cache holds) the cached run trains on the same latents and
    draws the same noise: the same loss curve, so the same LoRA."""
    flags = ["--max_train_steps", "3", "--dataloader_num_workers", "1"]
    encoded = main(tiny_args(tiny_captions, tmp_path / "encoded", *flags))
    cached = main(tiny_args(tiny_captions, tmp_path / "cached", *flags, "--cache_inputs"))
    encoded, cached = (load_file(out / "pytorch_lora_weights.safetensors") for out in (encoded, cached))
    assert encoded.keys() == cached.keys()
    for key in encoded:
        torch.testing.assert_close(cached[key], encoded[key], atol=1e-6, rtol=0)


def test_bad_training_sets_fail_before_any_model_loads(tiny_captions, tmp_path):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(empty / "train" / "a.png")
    (empty / "train" / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "  "}) + "\n")
    with pytest.raises(UserInputError, match="1 without a caption"):
        main(tiny_args(empty, tmp_path / "lora"))
    with pytest.raises(UserInputError, match="missing column"):
        main(tiny_args(tiny_captions, tmp_path / "lora", "--caption_column", "prompt"))
    with pytest.raises(UserInputError, match="not a folder"):
        main(tiny_args(tmp_path / "absent", tmp_path / "lora"))
    with pytest.raises(UserInputError, match=r"--caption_dropout must be in \[0, 1\)"):
        main(tiny_args(tiny_captions, tmp_path / "lora", "--caption_dropout", "1"))
    with pytest.raises(UserInputError, match="--resolution must be a positive multiple of 8"):
        main(tiny_args(tiny_captions, tmp_path / "lora", "--resolution", "60"))
    with pytest.raises(
        UserInputError, match=r"(?s)'stabilityai/stable-diffusion-xl-base-1.0'.*--pretrained_model_name_or_path"
    ):
        main(
            tiny_args(
                tiny_captions,
                tmp_path / "lora",
                "--pretrained_model_name_or_path",
                "stabilityai/stable-diffusion-xl-base-1.0",
            )
        )


def test_two_processes_train_with_gloo(tiny_captions, tmp_path):
    result = launch_two_processes(
        "vehicle_diff.training.finetune_lora", tiny_args(tiny_captions, tmp_path / "lora", "--max_train_steps", "2")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_file(tmp_path / "lora" / "pytorch_lora_weights.safetensors")


def test_a_stock_reload_keeps_the_trained_alpha(tiny_captions, tmp_path):
    """rank 4, alpha 8: the file's adapter metadata makes stock diffusers scale by 2, as training did."""
    from vehicle_diff.models import load_sdxl_pipeline

    out = main(tiny_args(tiny_captions, tmp_path / "lora", "--rank", "4", "--lora_alpha", "8", "--max_train_steps", "2",
                         "--validation_prompts", "a car"))  # fmt: skip
    pipe = load_sdxl_pipeline("tiny:sdxl")
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    adapter = next(iter(pipe.unet.peft_config))
    assert pipe.unet.peft_config[adapter].lora_alpha == 8
    scalings = {
        m.scaling[adapter] for m in pipe.unet.modules() if isinstance(getattr(m, "scaling", None), dict) and m.scaling
    }
    assert scalings == {2.0}


def test_the_same_lora_saved_twice_has_the_same_bytes(tmp_path):
    """safetensors orders a metadata map differently in each process; with one entry the bytes are fixed."""
    import subprocess
    import sys

    script = (
        "import sys, torch; from safetensors.torch import save_file; from vehicle_diff.training.lora_files import keep_one_metadata_entry\n"
        "save_file({'a': torch.ones(2)}, sys.argv[1], metadata={'format': 'pt', 'lora_adapter_metadata': '{}', 'x': '1'})\n"
        "keep_one_metadata_entry(sys.argv[1])\n"
    )
    files = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for file in files:
        subprocess.run([sys.executable, "-c", script, str(file)], check=True)
    assert len({file.read_bytes() for file in files}) == 1
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt") as handle:
        assert handle.metadata() == {"lora_adapter_metadata": "{}"}


def finetune_command(captions, out_dir, *extra) -> list[str]:
    return [sys.executable, "-m", "vehicle_diff.training.finetune_lora", *tiny_args(captions, out_dir, *extra)]


def test_killed_twice_the_same_command_resumes_to_the_uninterrupted_result(tiny_captions, tmp_path):
    """The tiny preset trains 8 steps with a checkpoint every 4: the first kill lands mid-run, the second after
    the checkpoint of the last step, which must not be trained again (an epoch here is 6 steps)."""
    flags = ["--validation_prompts", "a car"]
    straight = finetune_command(tiny_captions, tmp_path / "straight", *flags)
    subprocess.run(straight, check=True, capture_output=True)
    command = finetune_command(tiny_captions, tmp_path / "resumed", *flags)
    run_killed_at(command, "checkpoint.committed")  # right after checkpoint-4
    run_killed_at(command, "checkpoint.committed")  # resumed from 4, killed right after checkpoint-8
    subprocess.run(command, check=True, capture_output=True)

    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert sha256_file(b / "pytorch_lora_weights.safetensors") == sha256_file(a / "pytorch_lora_weights.safetensors")
    stats = [json.loads((out / "training_stats.json").read_text()) for out in (a, b)]
    assert stats[0]["steps"] == stats[1]["steps"] == 8
    assert sha256_file(b / "training_curves.png") == sha256_file(a / "training_curves.png")
    assert (b / "README.md").read_text() == (a / "README.md").read_text()
    resumed_from = json.loads((b / "done.json").read_text())["summary"]["resumed_from"]
    assert [(Path(r["checkpoint"]).name, r["step"]) for r in resumed_from] == [("checkpoint-4", 4), ("checkpoint-8", 8)]
    assert json.loads((a / "done.json").read_text())["summary"]["resumed_from"] == []


def test_a_checkpoint_of_another_rank_is_refused_in_one_line(tiny_captions, tmp_path):
    flags = ["--max_train_steps", "2", "--checkpointing_steps", "2", "--validation_seeds", "0"]
    subprocess.run(finetune_command(tiny_captions, tmp_path / "rank4", *flags), check=True, capture_output=True)
    checkpoint = tmp_path / "rank4" / "checkpoint-2"
    command = finetune_command(
        tiny_captions, tmp_path / "rank8", *flags, "--rank", "8", "--resume_from_checkpoint", str(checkpoint)
    )
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(checkpoint) in lines[0] and "another training plan" in lines[0]
    assert "rank: 4 -> 8" in lines[0]


def test_none_starts_afresh_and_latest_is_the_default(tmp_path):
    from dataclasses import fields

    from vehicle_diff.training.checkpointing import find_checkpoint
    from vehicle_diff.training.finetune_lora import FinetuneConfig
    from vehicle_diff.training.train_reid import TrainReIDConfig

    for config in (FinetuneConfig, TrainReIDConfig):
        assert next(f.default for f in fields(config) if f.name == "resume_from_checkpoint") == "latest"
    assert find_checkpoint(tmp_path, "none") is None


def test_the_saved_config_pins_the_resolved_hub_commit():
    """An unset --revision of a Hub base model is saved as the commit the job resolved; a local model's content
    hash is no revision a loader takes, so it stays in `provenance` only."""
    from vehicle_diff.training.finetune_lora import FinetuneConfig, pinned

    config = FinetuneConfig(pretrained_model_name_or_path="stabilityai/stable-diffusion-xl-base-1.0")
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert pinned(config, {"base_model_revision": commit}).revision == commit
    assert pinned(config, {"base_model_revision": "sha256:" + "0" * 64}).revision is None
    chosen = FinetuneConfig(revision="main")
    assert pinned(chosen, {"base_model_revision": commit}).revision == "main"  # what the user asked for
