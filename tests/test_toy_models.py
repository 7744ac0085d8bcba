"""The toy zoo's text-to-image trainer: its loss weighs what prompts ask for, and what it saves is a pipeline
that the stages load with the same call as any SDXL checkpoint."""

import pytest
import torch

from vehicle_diff import models
from vehicle_diff.errors import UserInputError
from vehicle_diff.toy_models import ToySDXLConfig, build_toy_sdxl, reconstruction_loss, vehicle_weights, warmup_cosine


def test_vehicle_weights_mark_each_box_and_nothing_else():
    weights = vehicle_weights([(1, 2, 3, 4), (0, 0, 1, 1)], (5, 6), inside=4.0)
    assert weights.shape == (2, 1, 6, 5)
    assert weights[0, 0, 2:4, 1:3].eq(4.0).all() and weights[0].sum() == 30 + 4 * 3
    assert weights[1, 0, 0, 0] == 4.0 and weights[1].sum() == 30 + 3


def test_the_loss_counts_a_wrong_paint_more_than_a_wrong_brightness():
    gray = torch.zeros(1, 3, 2, 2)
    weights = torch.ones(1, 1, 2, 2)
    lighter = gray + 0.2  # same hue, brighter
    red = gray + torch.tensor([0.2, -0.1, -0.1]).view(1, 3, 1, 1)  # hue shift, similar brightness
    brightness = reconstruction_loss(lighter, gray, weights, chroma_weight=3.0)
    paint = reconstruction_loss(red, gray, weights, chroma_weight=3.0)
    assert paint > brightness
    assert reconstruction_loss(red, gray, weights, chroma_weight=3.0) > reconstruction_loss(
        red, gray, weights, chroma_weight=1.0
    )
    assert reconstruction_loss(red, gray, 2 * weights, 1.0) == pytest.approx(
        2 * reconstruction_loss(red, gray, weights, 1.0)
    )


def test_a_trained_pipeline_loads_like_any_sdxl_checkpoint_and_draws_64px(tmp_path):
    config = ToySDXLConfig(scenes=8, vae_steps=2, vae_batch_size=4, unet_steps=2, unet_batch_size=4)
    out = build_toy_sdxl(tmp_path / "sdxl", config)
    assert [p.name for p in tmp_path.iterdir()] == ["sdxl"]  # the work folder is gone
    pipe = models.load_sdxl_pipeline(str(out))
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on its own latents
    image = pipe("a red 2012 Toyota Camry sedan driving down the road.", num_inference_steps=2, height=64, width=64)
    assert image.images[0].size == (64, 64)
    with pytest.raises(UserInputError, match="already exists"):
        build_toy_sdxl(out, config)


def test_the_learning_rate_warms_up_then_decays_to_zero_for_any_step_count():
    for steps in (1, 2, 20, 600):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        schedule = warmup_cosine(optimizer, steps)
        rates = []
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        assert max(rates) == pytest.approx(1.0) and all(0 <= rate <= 1 for rate in rates)
        assert rates[-1] <= rates[max(0, steps // 2)]
