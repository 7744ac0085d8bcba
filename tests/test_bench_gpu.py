"""The GPU benchmark's functions at toy size on the CPU (so they are known to run), and at full size on a GPU."""

import pytest
import torch

from benchmarks.bench_gpu import SDXL_UNET, lora_training_step, main, run


def test_smoke_runs_every_gpu_row_at_toy_size_on_cpu(tiny_zoo, capsys):
    rows = main(["--smoke"])
    assert "mean nothing" in capsys.readouterr().out
    assert [r["benchmark"].split(",")[0] for r in rows] == [
        "[smoke] LoRA step",
        "[smoke] CFG sampling",
        "[smoke] YOLOv5n6 @64 + tiny CLIP",
        "[smoke] generate vs bare pipe()",
    ]
    assert all(float(r["measured"].split()[0]) > 0 for r in rows)


def test_without_cuda_the_full_run_says_so_and_points_to_smoke(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--smoke"):
        main([])
    assert run()[0]["measured"] == "skipped"


def test_sdxl_config_is_the_real_architecture():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    assert 2.5e9 < sum(p.numel() for p in unet.parameters()) < 2.7e9  # SDXL's UNet has ~2.57 B parameters


@pytest.mark.gpu
def test_full_size_lora_step_at_1024_on_a_gpu():
    result = lora_training_step(
        SDXL_UNET, batch=1, resolution=1024, device="cuda", dtype=torch.bfloat16, gradient_checkpointing=True, steps=1
    )
    assert result["s_per_step"] > 0 and result["peak_gib"] < 70
