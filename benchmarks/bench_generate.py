"""Stage 3b on the tiny preset: the stage's images/s (with writing images and records) against bare pipeline
calls over the same model, prompts, seeds and batches; and 2 processes against 1."""

import tempfile
import time
from pathlib import Path

from benchmarks.common import row, run_child, tiny_prompts

IDENTITIES, PER_IDENTITY = 16, 8


def run():
    from vehicle_diff.generation.generate import (
        GenerateConfig,
        batch_requests,
        load_pipeline,
        main,
        read_prompt_library,
        render,
    )

    from vehicle_diff.config import parse_config

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prompts = tiny_prompts(Path(tmp) / "prompts", IDENTITIES)
        config = parse_config(GenerateConfig, "generate", ["--preset", "tiny"])
        total = IDENTITIES * PER_IDENTITY

        def bare_loop():
            pipe = load_pipeline(
                config.pretrained_model_name_or_path, revision=None, mixed_precision="no", device="cpu"
            )
            library = read_prompt_library(str(prompts))
            for batch in range(-(-total // config.batch_size)):
                requests = batch_requests(library, PER_IDENTITY, batch, config.batch_size, config.seed, [])
                render(
                    pipe,
                    [r["prompt"] for r in requests],
                    [r["seed"] for r in requests],
                    num_inference_steps=config.num_inference_steps,
                    guidance_scale=config.guidance_scale,
                    height=config.height,
                    width=config.width,
                )

        stage_args = ["--preset", "tiny", "--prompts", str(prompts), "--images_per_identity", str(PER_IDENTITY)]

        def stage_run(index):
            main([*stage_args, "--output_dir", f"{tmp}/gen{index}"])

        bare_loop()  # warm-up: the first calls in a process pay for lazy initialisation
        bare_s, stage_s = [], []
        for index in range(2):  # alternate, best of two
            started = time.perf_counter()
            bare_loop()
            bare_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            stage_run(index)
            stage_s.append(time.perf_counter() - started)
        bare, stage = total / min(bare_s), total / min(stage_s)
        rows.append(
            row(
                f"generate, tiny, {total} images 64px (load + render + write)",
                f"{stage:.1f} img/s",
                f"{bare:.1f} img/s (bare pipe calls)",
                stage / bare,
                ">= 0.9",
            )
        )

        args = ["-m", "vehicle_diff.generation.generate", *stage_args]
        one_s = run_child([*args, "--output_dir", f"{tmp}/one"])
        two_s = run_child(
            [
                "-m",
                "accelerate.commands.launch",
                "--multi_gpu",
                "--num_processes",
                "2",
                *args,
                "--output_dir",
                f"{tmp}/two",
            ]
        )
        rows.append(
            row(
                f"generate, 2 CPU processes vs 1 ({total} images, whole command)",
                f"{two_s:.1f} s",
                f"{one_s:.1f} s (1 process)",
                one_s / two_s,
                "speed-up, reported",
            )
        )
    return rows
