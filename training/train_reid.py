"""Stage 5a: train a re-ID model on real and / or synthetic data (paper §III-D, §IV, Table II), with accelerate.

Data modes: `R` real only, `S` synthetic only, `D` both pooled (identities drawn at random), `B` balanced (every
batch a real mini-batch of P identities merged with a synthetic one of P identities). Synthetic identity labels
start after the real ones. Loss: cross-entropy + circle loss on the main head and the same on the auxiliary head.

    accelerate launch -m vehicle_diff.training.train_reid --real_data veri776:/data/VeRi --synthetic_data out/vehicle-diff --data_mode B
    vehicle-diff train-reid --preset tiny --synthetic_data demo-output/vehicle-diff --data_mode S
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vehicle_diff.config import check_ranges, parse_config, save_config
from vehicle_diff.errors import UserInputError

from .reid_data import IdentityBatchSampler, load_image, read_source, relabel, source_digest


class ReIDImages(torch.utils.data.Dataset):
    """With `seed`, an image's random augmentation is drawn from (seed, epoch, index) alone, so it is the same
    whichever loader worker (or the main process) reads it, and a resumed epoch sees what it would have seen."""

    def __init__(self, samples, transform, seed: int | None = None):
        self.samples, self.transform, self.seed, self.epoch = samples, transform, seed, 0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        sample = self.samples[index]
        if self.seed is None:
            return self.transform(load_image(sample.image)), sample.pid
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream stays as it was
            # the CPU generator alone, which the transforms draw from: `torch.manual_seed` would also reseed every
            # accelerator's generator, at ~50x the cost per image
            torch.default_generator.manual_seed(hash_seed(self.seed, self.epoch, index))
            return self.transform(load_image(sample.image)), sample.pid


def hash_seed(*parts) -> int:
    """A 63-bit seed from the parts (stable across processes, unlike `hash`)."""
    import hashlib

    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


def loader_settings(num_workers: int | None, num_processes: int, cuda: bool) -> dict:
    """Workers that decode and augment while the model trains (one a spare core unless given), and pinned memory
    for the copy to a GPU."""
    from vehicle_diff.loading import default_num_workers

    workers = default_num_workers(num_processes) if num_workers is None else num_workers
    return {"num_workers": workers, "pin_memory": cuda, "prefetch_factor": 4 if workers else None}


def train_transform(
    image_size: list[int], *, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), random_erasing: float = 0.5
):
    """Resize, random flip, pad-and-crop, normalise with the backbone's own mean / std, random erasing (the
    strong re-ID baseline's augmentation, Luo et al. 2019)."""
    from torchvision import transforms

    steps = [
        transforms.Resize(tuple(image_size)),
        transforms.RandomHorizontalFlip(),
        transforms.Pad(10),
        transforms.RandomCrop(tuple(image_size)),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ]
    if random_erasing > 0:
        steps.append(transforms.RandomErasing(p=random_erasing, value=0))
    return transforms.Compose(steps)


@dataclass
class TrainReIDConfig:
    """Train a timm re-ID model with CE + circle loss on real and/or synthetic vehicles."""

    output_dir: str = field(
        default="vehicle-diff-output/reid", metadata={"help": "model.safetensors + config.json, card"}
    )
    preset: str = field(default="paper", metadata={"help": "paper, toy, tiny, or a YAML file"})
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
    ids_per_batch: int = field(default=16, metadata={"help": "P identities per batch (B: P real and P synthetic)"})
    images_per_id: int = field(default=4, metadata={"help": "K images per identity"})
    num_train_epochs: int = 60
    max_train_steps: int | None = None
    learning_rate: float = 3.5e-4
    weight_decay: float = 5e-4
    lr_scheduler: str = "cosine"
    lr_warmup_epochs: float = field(default=5, metadata={"help": "warm-up, in epochs (the paper preset: 10)"})
    lr_warmup_steps: int | None = field(default=None, metadata={"help": "warm-up in steps; overrides epochs"})
    random_erasing: float = field(default=0.5, metadata={"help": "random erasing probability (0 = off)"})
    max_synthetic_images: int | None = field(
        default=None, metadata={"help": "a seeded subsample of the synthetic images, identities kept balanced"}
    )
    label_smoothing: float = 0.1
    circle_loss: bool = field(default=True, metadata={"help": "false: cross-entropy only (the IDE baseline)"})
    bn_neck: bool = field(default=True, metadata={"help": "false: no BatchNorm neck (the IDE baseline)"})
    sampler: str = field(
        default="identity",
        metadata={"help": "identity (P x K, or B's balance) or random (shuffled images, the IDE baseline)"},
    )
    circle_m: float = field(default=0.25, metadata={"help": "relaxation margin m (Sun et al. 2020)"})
    circle_gamma: float = field(default=128.0, metadata={"help": "scale gamma"})
    mixed_precision: str = "no"
    checkpointing_steps: int = 1000
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str = field(
        default="latest",
        metadata={"help": "latest (continue this run), checkpoint-STEP, a checkpoint folder, or none (start afresh)"},
    )
    eval_every_epochs: int = 10
    flip_test: bool = field(default=False, metadata={"help": "average features with the mirrored image at evaluation"})
    seed: int = 0
    dataloader_num_workers: int | None = field(
        default=None, metadata={"help": "loader worker processes (default: one a spare CPU core, at most 8)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace this stage's earlier outputs in --output_dir"})
    dry_run: bool = field(default=False, metadata={"help": "read the data lists only; print and write plan.json"})

    def __post_init__(self):
        check_ranges(self, non_negative=("seed", "dataloader_num_workers"), positive=("checkpoints_total_limit",))
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserInputError(f"--mixed_precision {self.mixed_precision!r}: use no, fp16 or bf16")
        if not 0 <= self.circle_m < 1:
            raise UserInputError(f"--circle_m must be in [0, 1) (got {self.circle_m})")
        if self.data_mode not in ("R", "S", "D", "B"):
            raise UserInputError(f"--data_mode {self.data_mode!r}: use R, S, D or B")
        if self.data_mode in ("R", "D", "B") and not self.real_data:
            raise UserInputError(f"--data_mode {self.data_mode} needs --real_data")
        if self.data_mode in ("S", "D", "B") and not self.synthetic_data:
            raise UserInputError(f"--data_mode {self.data_mode} needs --synthetic_data")
        for name in ("ids_per_batch", "images_per_id", "num_train_epochs", "checkpointing_steps", "eval_every_epochs"):
            if getattr(self, name) <= 0:
                raise UserInputError(f"--{name} must be positive (got {getattr(self, name)})")
        if self.sampler not in ("identity", "random"):
            raise UserInputError(f"--sampler {self.sampler!r}: use identity or random")
        if self.sampler == "random" and self.data_mode == "B":
            raise UserInputError("--sampler random draws from one pool; data mode B balances identities (use D)")
        if self.images_per_id < 2 and self.circle_loss:
            raise UserInputError("--images_per_id must be >= 2: circle loss needs positive pairs")
        if not 0 <= self.label_smoothing < 1:
            raise UserInputError(f"--label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if len(self.image_size) != 2 or min(self.image_size) <= 0 or any(side % 8 for side in self.image_size):
            raise UserInputError(f"--image_size takes HEIGHT WIDTH, positive multiples of 8 (got {self.image_size})")
        if not self.learning_rate > 0 or self.weight_decay < 0 or self.circle_gamma <= 0 or self.circle_m < 0:
            raise UserInputError(
                "--learning_rate and --circle_gamma must be positive, --weight_decay and --circle_m >= 0"
            )
        if not 0 <= self.random_erasing <= 1 or self.lr_warmup_epochs < 0 or self.aux_loss_weight < 0:
            raise UserInputError("--random_erasing must be in [0, 1]; --lr_warmup_epochs, --aux_loss_weight >= 0")
        if self.max_train_steps is not None and self.max_train_steps <= 0:
            raise UserInputError(f"--max_train_steps must be positive (got {self.max_train_steps})")
        if self.max_synthetic_images is not None and self.max_synthetic_images <= 0:
            raise UserInputError(f"--max_synthetic_images must be positive (got {self.max_synthetic_images})")
        if self.checkpoints_total_limit <= 0:
            raise UserInputError(f"--checkpoints_total_limit must be positive (got {self.checkpoints_total_limit})")


def training_data(config: TrainReIDConfig, *, rank: int = 0, world: int = 1):
    """The training samples (real labels 0..R-1, synthetic R..), their sources and the batch sampler; reads the
    data lists only, no image."""
    real = read_source(config.real_data) if config.data_mode in ("R", "D", "B") else None
    synthetic = read_source(config.synthetic_data) if config.data_mode in ("S", "D", "B") else None
    real_train = real.train if real else []
    synthetic_train = synthetic.train if synthetic else []
    if synthetic_train and config.max_synthetic_images:
        from .reid_data import subsample_synthetic

        synthetic_train = subsample_synthetic(synthetic_train, config.max_synthetic_images, config.seed)
    offset = len({s.pid for s in real_train})
    synthetic_train = relabel(synthetic_train, offset=offset) if synthetic_train else []
    samples = real_train + synthetic_train
    sources = ["real"] * len(real_train) + ["synthetic"] * len(synthetic_train)
    sampler = IdentityBatchSampler(
        [s.pid for s in samples],
        sources,
        p=config.ids_per_batch,
        k=config.images_per_id,
        mode=config.data_mode,
        seed=config.seed,
        rank=rank,
        world=world,
        random_batches=config.sampler == "random",
    )
    if len(sampler) == 0:
        raise UserInputError(
            f"no full batch of {sampler.batch_size} images ({config.ids_per_batch} identities x "
            f"{config.images_per_id} images{', real and synthetic each' if config.data_mode == 'B' else ''}) "
            "per process: lower --ids_per_batch or --images_per_id"
        )
    if not config.eval_data and not (real and real.query) and not (synthetic and synthetic.query):
        raise UserInputError(
            f"--synthetic_data {config.synthetic_data}: every image is in train (no held-out query / gallery), so "
            "there is nothing to evaluate on; pass --eval_data (e.g. veri776:ROOT), or export with --eval_fraction"
        )
    eval_data = config.eval_data or (config.real_data if real and real.query else config.synthetic_data)
    return samples, sources, sampler, eval_data


def schedule(config: TrainReIDConfig, steps_per_epoch: int) -> tuple[int, int, int]:
    """(total steps, epochs, warm-up steps): warm-up is counted in epochs unless given in steps."""
    total = config.max_train_steps or config.num_train_epochs * steps_per_epoch
    warmup = (
        config.lr_warmup_steps
        if config.lr_warmup_steps is not None
        else round(config.lr_warmup_epochs * steps_per_epoch)
    )
    return total, -(-total // steps_per_epoch), max(0, min(warmup, total - 1))


def dry_run(config: TrainReIDConfig) -> Path:
    """The plan at full scale from the data lists alone: images, identities, steps, warm-up, batch shares."""
    from vehicle_diff.jobs import write_plan

    samples, sources, sampler, eval_data = training_data(config)
    total, epochs, warmup = schedule(config, len(sampler))
    real_share = {"R": 1.0, "S": 0.0, "B": 0.5}.get(config.data_mode, round(sources.count("real") / len(sources), 4))
    plan = {
        "stage": "train-reid",
        "data_mode": config.data_mode,
        "num_images": len(samples),
        "num_real_images": sources.count("real"),
        "num_synthetic_images": sources.count("synthetic"),
        "num_identities": len({s.pid for s in samples}),
        "batch_size": sampler.batch_size,
        "steps_per_epoch": len(sampler),
        "epochs": epochs,
        "total_steps": total,
        "warmup_steps": warmup,
        "batch_share": {"real": real_share, "synthetic": round(1 - real_share, 4)},
        "sampler": config.sampler,
        "losses": "cross-entropy + circle" if config.circle_loss else "cross-entropy",
        "bn_neck": config.bn_neck,
        "eval_data": eval_data,
    }
    return write_plan(config.output_dir, plan)


def job_components(config: TrainReIDConfig) -> dict:
    """The model depends on its settings and the content of its data (dataset folders or reader roots)."""
    from vehicle_diff.jobs import output_settings

    components = {
        "settings": output_settings(
            config,
            ignore=(
                "real_data",
                "synthetic_data",
                "eval_data",
                "checkpointing_steps",
                "checkpoints_total_limit",
                "eval_every_epochs",
            ),
        ),
        "real_data": source_digest(config.real_data),
        "synthetic_data": source_digest(config.synthetic_data),
        "eval_data": source_digest(config.eval_data),
    }
    if config.data_mode == "B":  # B once split one batch in halves: a model trained so is another recipe
        components["balanced_batches"] = "a real and a synthetic mini-batch, merged"
    return components


def train_reid(config: TrainReIDConfig) -> Path:
    """The training script, top-down: accelerator, data, model, optimizer, resume, loop, evaluation, save."""
    if config.dry_run:
        return dry_run(config)
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from .checkpointing import checkpoint_to_resume, open_training_output, resume, save_checkpoint
    from .evaluate import evaluate_model
    from .reid_model import ReIDModel, backbone_spec, reid_loss

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision)
    samples, sources, sampler, eval_data = training_data(
        config, rank=accelerator.process_index, world=accelerator.num_processes
    )
    job = open_training_output(
        config.output_dir,
        "train-reid",
        job_components(config),
        overwrite=config.overwrite,
        accelerator=accelerator,
        owned=[
            "model.safetensors",
            "config.json",
            "README.md",
            "metrics.json",
            "training_stats.json",
            "training_curves.png",
            "config.yaml",
            "plan.json",
            "reid_heads.safetensors",
            "card_context.json",
        ],
    )
    out_dir = job.out_dir
    resume_point = checkpoint_to_resume(job, config.resume_from_checkpoint)  # checked before any model loads
    set_seed(config.seed)
    num_classes = len({s.pid for s in samples})

    architecture, backbone_args = backbone_spec(config.backbone)
    model = ReIDModel(
        architecture=architecture,
        backbone_args=backbone_args,
        num_classes=num_classes,
        last_stride_1=config.last_stride_1,
        aux_head=config.aux_head,
        image_size=config.image_size,
        bn_neck=config.bn_neck,
    )
    if config.pretrained_backbone:
        model.load_backbone(config.backbone)
    dataset = ReIDImages(  # normalised with the backbone's own mean / std, as the model saves it for evaluation
        samples,
        train_transform(config.image_size, mean=model.mean, std=model.std, random_erasing=config.random_erasing),
        seed=config.seed,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = len(sampler)
    max_train_steps, num_epochs, warmup = schedule(config, steps_per_epoch)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_training_steps=max_train_steps * accelerator.num_processes,
        num_warmup_steps=warmup * accelerator.num_processes,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    step, progress = resume(accelerator, resume_point)
    if accelerator.is_main_process:
        save_config(config, out_dir / "config.yaml", stage="train-reid", provenance=provenance(config))

    # evaluations, loss curve and training time before the checkpoint continue, not restart
    history, curve = progress.get("metrics", []), progress.get("history", [])
    seconds_before, resumed_from = progress.get("seconds", 0.0), progress.get("resumed_from", [])

    def save_progress():
        seconds = seconds_before + time.perf_counter() - started
        state = {"metrics": history, "history": curve, "seconds": seconds, "resumed_from": resumed_from}
        save_checkpoint(accelerator, job, step, config.checkpoints_total_limit, state)

    bar = tqdm(
        total=max_train_steps,
        initial=step,
        desc="train-reid",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    first_epoch, started = step // steps_per_epoch, time.perf_counter()
    # a checkpoint of the last step has nothing left to train, though its epoch may look unfinished
    end_epoch = num_epochs if step < max_train_steps else first_epoch
    for epoch in range(first_epoch, end_epoch):
        sampler.set_epoch(epoch)
        sampler.skip = step - epoch * steps_per_epoch if epoch == first_epoch else 0
        # its own generator: creating the iterator must not draw from the global RNG that checkpoints restore
        dataset.epoch = epoch
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            generator=torch.Generator().manual_seed(config.seed + epoch),
            **loader_settings(
                config.dataloader_num_workers, accelerator.num_processes, accelerator.device.type == "cuda"
            ),
        )
        model.train()
        for images, labels in loader:
            with accelerator.autocast():
                outputs = model(images.to(accelerator.device))
            loss, parts = reid_loss(
                outputs,
                labels.to(accelerator.device),
                label_smoothing=config.label_smoothing,
                circle_m=config.circle_m,
                circle_gamma=config.circle_gamma,
                aux_weight=config.aux_loss_weight,
                circle=config.circle_loss,
            )
            accelerator.backward(loss)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
            curve.append({"step": step, "loss": loss.item(), "learning_rate": lr_scheduler.get_last_lr()[0]})
            if step >= max_train_steps:
                break
            if step % config.checkpointing_steps == 0 and step < (epoch + 1) * steps_per_epoch:
                save_progress()  # mid-epoch; an epoch's last step is saved after its evaluation, below
        last_epoch = epoch + 1 == num_epochs or step >= max_train_steps
        if (epoch + 1) % config.eval_every_epochs == 0 or last_epoch:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                metrics, _ = evaluate_model(
                    accelerator.unwrap_model(model),
                    eval_data,
                    flip=config.flip_test,
                    rerank=False,
                    vehicleid_draws=1,
                    device=accelerator.device,
                    progress=False,
                )
                metrics["reported"] = "flip" if config.flip_test else "plain"
                history.append({"epoch": epoch + 1, "step": step, **metrics})
                accelerator.print(
                    f"epoch {epoch + 1}: mAP {metrics[metrics['reported']]['mAP']:.4f}, "
                    f"rank-1 {metrics[metrics['reported']]['rank1']:.4f} ({metrics['reported']} features)"
                )
        if step % config.checkpointing_steps == 0:
            save_progress()
        if step >= max_train_steps:
            break
    bar.close()
    seconds = seconds_before + time.perf_counter() - started
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        final.save_pretrained(out_dir)
        images_seen = step * sampler.batch_size * accelerator.num_processes
        stats = {
            "steps": step,
            "seconds": round(seconds, 3),
            "images_per_second": round(images_seen / max(seconds, 1e-9), 2),
            "num_classes": num_classes,
            "real_images": sources.count("real"),
            "synthetic_images": sources.count("synthetic"),
        }
        (out_dir / "training_stats.json").write_text(json.dumps(stats, indent=2))
        (out_dir / "metrics.json").write_text(json.dumps(history, indent=2))
        from .checkpointing import plot_training_curves

        plot_training_curves(
            curve, out_dir / "training_curves.png", title=f"train-reid: {architecture}, data {config.data_mode}"
        )
        write_card(
            config,
            out_dir,
            history[-1] if history else None,
            stats,
            eval_data,
            architecture,
            # how timm rebuilds the published embedding network, for the card's loading notes
            timm_args=final.timm_args,
            embedding_dim=final.head.classifier.in_features,
        )
        job.mark_done({"steps": step, "resumed_from": resumed_from})
        accelerator.print(
            f"Re-ID model: {out_dir} (load it with ReIDModel.from_pretrained). Metrics: {out_dir / 'metrics.json'}"
        )
    accelerator.end_training()
    job.release()
    return out_dir


def main(argv: list[str] | None = None) -> Path:
    return train_reid(parse_config(TrainReIDConfig, "train-reid", argv))


def provenance(config: TrainReIDConfig) -> dict:
    """The exact starting weights, saved with the config and stated on the card: the Hub commit of a timm or
    `hf-hub:` backbone, or sha256 of a local one's content; none when training starts from random weights."""
    from vehicle_diff.models import resolved_revision

    if not config.pretrained_backbone:
        return {}
    return {"backbone": {"id": config.backbone, "revision": resolved_revision(config.backbone, flag="--backbone")}}


def write_card(
    config: TrainReIDConfig,
    out_dir: Path,
    metrics: dict | None,
    stats: dict,
    eval_data: str,
    architecture: str,
    **facts,
) -> None:
    """README.md, and the facts it states as card_context.json, from which `publish` renders the card again with
    the repo ids it publishes the model and its training data to. No path of this machine goes into the card."""
    from vehicle_diff.cards import REAL_DATASETS, load_context, model_ref, render_reid_card, save_context

    from vehicle_diff import __version__
    from vehicle_diff.models import timm_hub_id

    def dataset(spec: str | None, **extra) -> dict | None:
        """A vehicle-diff dataset given by folder or Hub id; a folder's card context names the model that made it."""
        if not spec:
            return None
        folder = Path(spec)
        generation = ((load_context(folder) or {}).get("generation") or {}) if folder.is_dir() else {}
        return {
            **model_ref(spec),
            "revision": None,
            "base_model": generation.get("base_model"),
            "base_revision": generation.get("base_model_revision"),
            "path": str(folder.resolve()) if folder.exists() else None,
            **extra,
        }

    def real(spec: str) -> dict:
        kind = spec.partition(":")[0]
        return (
            {"kind": kind, "title": REAL_DATASETS[kind][0]}
            if kind in REAL_DATASETS
            else {"kind": "other", "title": model_ref(spec)["name"]}
        )

    synthetic = dataset(config.synthetic_data) if config.data_mode != "R" else None
    if eval_data == config.synthetic_data:
        evaluation = dataset(
            eval_data, title="held-out synthetic identities (query vs gallery)", split="query", is_synthetic=True
        )
    elif eval_data.partition(":")[0] in REAL_DATASETS:
        name = REAL_DATASETS[eval_data.partition(":")[0]][0]
        evaluation = {
            "name": name,
            "hub": False,
            "title": f"{name} test (query vs gallery)",
            "split": "query",
            "is_synthetic": False,
        }
    else:
        evaluation = dataset(
            eval_data, title=f"{model_ref(eval_data)['name']} (query vs gallery)", split="query", is_synthetic=False
        )
    backbone = model_ref(config.backbone)
    starts_from_hub = config.pretrained_backbone and not backbone["tiny"] and not backbone["local"]
    settings = {
        key: value
        for key, value in asdict(config).items()
        if key
        not in (
            "output_dir",
            "real_data",
            "synthetic_data",
            "eval_data",
            "preset",
            "backbone",
            "resume_from_checkpoint",
        )
    }
    context = {
        "architecture": architecture,
        "config": settings,
        "backbone": backbone,
        "base_model_hub_id": timm_hub_id(config.backbone) if starts_from_hub else None,
        "backbone_revision": (provenance(config).get("backbone") or {}).get("revision"),
        "real_data": [real(config.real_data)] if config.real_data and config.data_mode != "S" else [],
        "synthetic_data": synthetic,
        "eval_data": evaluation,
        # the variant training evaluated (no flip unless --flip_test), under the name the card reads
        "metrics": {"plain": metrics[metrics.get("reported", "plain")]} if metrics else None,
        "stats": stats,
        "vehicle_diff_version": __version__,
        **facts,
    }
    save_context(out_dir, context)
    render_reid_card(context).save(out_dir / "README.md")


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
