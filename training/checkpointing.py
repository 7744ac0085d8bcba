"""What both training scripts need from accelerate's checkpoints: a step counter saved with them, and resuming."""

from __future__ import annotations

from pathlib import Path


class TrainingProgress:
    """The optimizer-step counter, saved and restored with accelerate's checkpoints."""

    def __init__(self):
        self.step = 0

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


def resume(accelerator, out_dir: Path, checkpoint: str | None) -> bool:
    """Restore model, optimizer, scheduler, RNG and step from `latest` or a checkpoint folder (accelerate's
    automatic naming: OUT/checkpoints/checkpoint_N). Returns False when `latest` finds nothing yet."""
    if not checkpoint:
        return False
    checkpoints = Path(out_dir) / "checkpoints"
    numbers = [int(p.name.split("_")[-1]) for p in checkpoints.glob("checkpoint_*")]
    if checkpoint == "latest" and not numbers:
        accelerator.print(f"no checkpoint in {checkpoints} yet; starting from step 0")
        return False
    accelerator.load_state(None if checkpoint == "latest" else checkpoint)
    accelerator.project_configuration.iteration = max(numbers) + 1  # new checkpoints continue the numbering
    return True
