"""Stage 5a: train a re-ID model on real and / or synthetic data (paper §III-D, §IV, Table II), with accelerate.

Data modes: `R` real only, `S` synthetic only, `D` both pooled (identities drawn at random), `B` balanced (every
batch half real, half synthetic identities). Synthetic identity labels start after the real ones. Loss: cross-
entropy + circle loss on the main head and the same on the auxiliary head.

    accelerate launch -m training.train_reid --real_data veri776:/data/VeRi --synthetic_data out/dataset --data_mode B
    vehicle-diff train-reid --preset tiny --synthetic_data demo-output/dataset --data_mode S
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vehicle_diff.config import parse_config, save_config
from vehicle_diff.errors import UserInputError

from .reid_data import IdentityBatchSampler, load_image, read_source, relabel


class ReIDImages(torch.utils.data.Dataset):
    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        sample = self.samples[index]
        return self.transform(load_image(sample.image)), sample.pid


def train_transform(image_size: list[int]):
    """Resize, random flip, pad-and-crop, normalise (the usual re-ID baseline augmentation)."""
    from torchvision import transforms

    from .evaluate import IMAGENET_MEAN, IMAGENET_STD

    return transforms.Compose([
        transforms.Resize(tuple(image_size)),
        transforms.RandomHorizontalFlip(),
        transforms.Pad(10),
        transforms.RandomCrop(tuple(image_size)),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip


@dataclass
class TrainReIDConfig:
    """Train a timm re-ID model with CE + circle loss on real and/or synthetic vehicles."""

    output_dir: str = field(
        default="vehicle-diff-output/reid", metadata={"help": "model.safetensors + config.json, card"}
    )
    preset: str = field(default="paper", metadata={"help": "paper, tiny, or a YAML file"})
    real_data: str | None = field(
        default=None, metadata={"help": "veri776:ROOT, cityflow:ROOT, vehicleid:ROOT, or a dataset"}
    )
    synthetic_data: str | None = field(default=None, metadata={"help": "the vehicle-diff dataset (folder or repo)"})
    data_mode: str = field(default="B", metadata={"help": "R real, S synthetic, D mixed, B balanced (paper Table II)"})
    eval_data: str | None = field(
        default=None, metadata={"help": "default: the real data's query/gallery, else the synthetic"}
    )
    backbone: str = field(
        default="resnet50.tv_in1k", metadata={"help": "timm id or folder (IDE ResNet-50, densenet121, swinv2)"}
    )
    pretrained_backbone: bool = True
    last_stride_1: bool = True
    aux_head: bool = True
    aux_loss_weight: float = field(default=1.0, metadata={"help": "the paper applies the same losses to both heads"})
    image_size: list[int] = field(default_factory=lambda: [256, 256])
    ids_per_batch: int = field(default=16, metadata={"help": "P identities per batch"})
    images_per_id: int = field(default=4, metadata={"help": "K images per identity"})
    num_train_epochs: int = 60
    max_train_steps: int | None = None
    learning_rate: float = 3.5e-4
    weight_decay: float = 5e-4
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 500
    label_smoothing: float = 0.1
    circle_m: float = field(default=0.25, metadata={"help": "relaxation margin m (Sun et al. 2020)"})
    circle_gamma: float = field(default=128.0, metadata={"help": "scale gamma"})
    mixed_precision: str = "no"
    checkpointing_steps: int = 1000
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = None
    eval_every_epochs: int = 10
    flip_test: bool = True
    seed: int = 0
    dataloader_num_workers: int = 0

    def __post_init__(self):
        if self.data_mode not in ("R", "S", "D", "B"):
            raise UserInputError(f"--data_mode {self.data_mode!r}: use R, S, D or B")
        if self.data_mode in ("R", "D", "B") and not self.real_data:
            raise UserInputError(f"--data_mode {self.data_mode} needs --real_data")
        if self.data_mode in ("S", "D", "B") and not self.synthetic_data:
            raise UserInputError(f"--data_mode {self.data_mode} needs --synthetic_data")
        for name in ("ids_per_batch", "images_per_id", "num_train_epochs", "checkpointing_steps", "eval_every_epochs"):
            if getattr(self, name) <= 0:
                raise UserInputError(f"--{name} must be positive (got {getattr(self, name)})")
        if self.images_per_id < 2:
            raise UserInputError("--images_per_id must be >= 2: circle loss needs positive pairs")
        if not 0 <= self.label_smoothing < 1:
            raise UserInputError(f"--label_smoothing must be in [0, 1) (got {self.label_smoothing})")


def main(argv: list[str] | None = None) -> Path:
    config = parse_config(TrainReIDConfig, "train-reid", argv)
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from .checkpointing import TrainingProgress, resume
    from .evaluate import evaluate_model
    from .reid_model import ReIDModel, backbone_spec, reid_loss

    out_dir = Path(config.output_dir)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        project_config=ProjectConfiguration(
            project_dir=str(out_dir), automatic_checkpoint_naming=True, total_limit=config.checkpoints_total_limit
        ),  # fmt: skip
    )
    set_seed(config.seed)

    # data: real labels 0..R-1, synthetic R..R+S-1
    real = read_source(config.real_data) if config.data_mode in ("R", "D", "B") else None
    synthetic = read_source(config.synthetic_data) if config.data_mode in ("S", "D", "B") else None
    real_train = real.train if real else []
    offset = len({s.pid for s in real_train})
    synthetic_train = relabel(synthetic.train, offset=offset) if synthetic else []
    samples = real_train + synthetic_train
    sources = ["real"] * len(real_train) + ["synthetic"] * len(synthetic_train)
    num_classes = len({s.pid for s in samples})
    sampler = IdentityBatchSampler([s.pid for s in samples], sources, p=config.ids_per_batch, k=config.images_per_id,
                                   mode=config.data_mode, seed=config.seed, rank=accelerator.process_index,
                                   world=accelerator.num_processes)  # fmt: skip
    dataset = ReIDImages(samples, train_transform(config.image_size))
    if len(sampler) == 0:
        raise UserInputError(
            f"no full batch of {config.ids_per_batch} identities x {config.images_per_id} images per process"
        )
    eval_data = config.eval_data or (config.real_data if real and real.query else config.synthetic_data)

    architecture, backbone_args = backbone_spec(config.backbone)
    model = ReIDModel(architecture=architecture, backbone_args=backbone_args, num_classes=num_classes,
                      last_stride_1=config.last_stride_1, aux_head=config.aux_head, image_size=config.image_size)  # fmt: skip
    if config.pretrained_backbone:
        model.load_backbone(config.backbone)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = len(sampler)
    max_train_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
    num_epochs = -(-max_train_steps // steps_per_epoch)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer, num_training_steps=max_train_steps * accelerator.num_processes,
                                 num_warmup_steps=min(config.lr_warmup_steps, max_train_steps - 1) * accelerator.num_processes)  # fmt: skip
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    resume(accelerator, out_dir, config.resume_from_checkpoint)
    save_config(config, out_dir / "config.yaml", stage="train-reid")

    history = []
    bar = tqdm(
        total=max_train_steps,
        initial=progress.step,
        desc="train-reid",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    first_epoch, first_step, started = progress.step // steps_per_epoch, progress.step, time.perf_counter()
    for epoch in range(first_epoch, num_epochs):
        sampler.set_epoch(epoch)
        sampler.skip = progress.step - epoch * steps_per_epoch if epoch == first_epoch else 0
        # its own generator: creating the iterator must not draw from the global RNG that checkpoints restore
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=config.dataloader_num_workers,
                                             generator=torch.Generator().manual_seed(config.seed + epoch))  # fmt: skip
        model.train()
        for images, labels in loader:
            with accelerator.autocast():
                outputs = model(images.to(accelerator.device))
            loss, parts = reid_loss(outputs, labels.to(accelerator.device), label_smoothing=config.label_smoothing,
                                    circle_m=config.circle_m, circle_gamma=config.circle_gamma, aux_weight=config.aux_loss_weight)  # fmt: skip
            accelerator.backward(loss)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            progress.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
            if progress.step % config.checkpointing_steps == 0:
                accelerator.save_state()
            if progress.step >= max_train_steps:
                break
        last_epoch = epoch + 1 == num_epochs or progress.step >= max_train_steps
        if (epoch + 1) % config.eval_every_epochs == 0 or last_epoch:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                metrics, _ = evaluate_model(accelerator.unwrap_model(model), eval_data, flip=config.flip_test, rerank=False,
                                            vehicleid_draws=1, device=accelerator.device)  # fmt: skip
                history.append({"epoch": epoch + 1, "step": progress.step, **metrics})
                accelerator.print(
                    f"epoch {epoch + 1}: mAP {metrics['plain']['mAP']:.4f}, rank-1 {metrics['plain']['rank1']:.4f}"
                )
        if progress.step >= max_train_steps:
            break
    bar.close()
    seconds = time.perf_counter() - started
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        final.save_pretrained(out_dir)
        images_seen = (
            (progress.step - first_step) * config.ids_per_batch * config.images_per_id * accelerator.num_processes
        )
        stats = {"steps": progress.step - first_step, "seconds": round(seconds, 3), "images_per_second": round(images_seen / max(seconds, 1e-9), 2),
                 "num_classes": num_classes, "real_images": len(real_train), "synthetic_images": len(synthetic_train)}  # fmt: skip
        (out_dir / "training_stats.json").write_text(json.dumps(stats, indent=2))
        (out_dir / "metrics.json").write_text(json.dumps(history, indent=2))
        write_card(config, out_dir, history[-1] if history else None, stats, eval_data, architecture)
        accelerator.print(
            f"re-ID model: {out_dir} (load with ReIDModel.from_pretrained); metrics: {out_dir / 'metrics.json'}"
        )
    accelerator.end_training()
    return out_dir


def write_card(
    config: TrainReIDConfig, out_dir: Path, metrics: dict | None, stats: dict, eval_data: str, architecture: str
) -> None:
    """README.md, and the facts it states as card_context.json, from which `publish` renders the card again with
    the repo ids it publishes the model and its training data to. No path of this machine goes into the card."""
    from cards import REAL_DATASETS, load_context, model_ref, render_reid_card, save_context
    from vehicle_diff import __version__
    from vehicle_diff.models import timm_hub_id

    def dataset(spec: str | None, **extra) -> dict | None:
        """A vehicle-diff dataset given by folder or Hub id; a folder's card context names the model that made it."""
        if not spec:
            return None
        folder = Path(spec)
        generation = ((load_context(folder) or {}).get("generation") or {}) if folder.is_dir() else {}
        return {**model_ref(spec), "revision": None, "base_model": generation.get("base_model"),
                "path": str(folder.resolve()) if folder.exists() else None, **extra}  # fmt: skip

    def real(spec: str) -> dict:
        kind = spec.partition(":")[0]
        return {"kind": kind, "title": REAL_DATASETS[kind][0]} if kind in REAL_DATASETS else {
            "kind": "other", "title": model_ref(spec)["name"]}  # fmt: skip

    synthetic = dataset(config.synthetic_data) if config.data_mode != "R" else None
    if eval_data == config.synthetic_data:
        evaluation = dataset(eval_data, title="held-out synthetic identities (query vs gallery)", split="query",
                             is_synthetic=True)  # fmt: skip
    elif eval_data.partition(":")[0] in REAL_DATASETS:
        name = REAL_DATASETS[eval_data.partition(":")[0]][0]
        evaluation = {"name": name, "hub": False, "title": f"{name} test (query vs gallery)", "split": "query",
                      "is_synthetic": False}  # fmt: skip
    else:
        evaluation = dataset(eval_data, title=f"{model_ref(eval_data)['name']} (query vs gallery)", split="query",
                             is_synthetic=False)  # fmt: skip
    backbone = model_ref(config.backbone)
    starts_from_hub = config.pretrained_backbone and not backbone["tiny"] and not backbone["local"]
    settings = {key: value for key, value in asdict(config).items()
                if key not in ("output_dir", "real_data", "synthetic_data", "eval_data", "preset", "backbone", "resume_from_checkpoint")}  # fmt: skip
    context = {
        "architecture": architecture,
        "config": settings,
        "backbone": backbone,
        "base_model_hub_id": timm_hub_id(config.backbone) if starts_from_hub else None,
        "real_data": [real(config.real_data)] if config.real_data and config.data_mode != "S" else [],
        "synthetic_data": synthetic,
        "eval_data": evaluation,
        "metrics": {key: metrics[key] for key in ("plain",) if key in metrics} if metrics else None,
        "stats": stats,
        "vehicle_diff_version": __version__,
    }
    save_context(out_dir, context)
    render_reid_card(context).save(out_dir / "README.md")


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
