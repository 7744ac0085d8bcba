import math

import pytest
import torch
from vehicle_diff.training.reid_model import ReIDModel, backbone_spec, circle_loss


def circle_reference(embeddings, labels, m, gamma):
    """Sun et al.'s Eq. per anchor, written with loops."""
    x = torch.nn.functional.normalize(embeddings.double(), dim=1)
    losses = []
    for i in range(len(labels)):
        pos = [float(x[i] @ x[j]) for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = [float(x[i] @ x[j]) for j in range(len(labels)) if labels[j] != labels[i]]
        if not pos or not neg:
            continue
        sum_n = sum(math.exp(gamma * max(s + m, 0) * (s - m)) for s in neg)
        sum_p = sum(math.exp(-gamma * max(1 + m - s, 0) * (s - (1 - m))) for s in pos)
        losses.append(math.log1p(sum_n * sum_p))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("gamma", [1.0, 8.0, 32.0])
def test_circle_loss_matches_its_formula(gamma):
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(12, 6, generator=generator)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 5])  # 4 and 5 have no positive
    assert circle_loss(embeddings, labels, m=0.25, gamma=gamma).item() == pytest.approx(
        circle_reference(embeddings, labels, 0.25, gamma), rel=1e-5
    )


def test_circle_loss_gradient_pulls_positives_together():
    embeddings = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    optimizer = torch.optim.SGD([embeddings], lr=0.1)
    first = circle_loss(embeddings, labels).item()
    for _ in range(50):
        optimizer.zero_grad()
        circle_loss(embeddings, labels, gamma=16).backward()
        optimizer.step()
    assert circle_loss(embeddings, labels).item() < first
    assert circle_loss(embeddings, torch.arange(8)).item() == 0.0  # no positives at all


@pytest.mark.parametrize("name", ["timm-resnet", "timm-densenet", "timm-swinv2"])
def test_model_heads_and_one_call_round_trip(tiny_zoo, name, tmp_path):
    architecture, args = backbone_spec(f"tiny:{name}")
    model = ReIDModel(architecture=architecture, backbone_args=args, num_classes=7, image_size=[64, 64])
    model.load_backbone(f"tiny:{name}")
    images = torch.randn(4, 3, 64, 64)
    outputs = model.train()(images)
    assert outputs["logits"].shape == (4, 7) and outputs["aux_logits"].shape == (4, 7)
    assert outputs["embedding"].shape[0] == 4
    model.eval()
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    again = ReIDModel.from_pretrained(tmp_path / "model").eval()
    torch.testing.assert_close(again.extract(images), model.extract(images))
    assert torch.allclose(model.extract(images).norm(dim=1), torch.ones(4))


def test_last_stride_one_doubles_the_resnet_resolution(tiny_zoo):
    architecture, args = backbone_spec("tiny:timm-resnet")
    images = torch.randn(1, 3, 64, 64)
    strided = ReIDModel(architecture=architecture, backbone_args=args, last_stride_1=False).feature_maps(images)[1]
    kept = ReIDModel(architecture=architecture, backbone_args=args, last_stride_1=True).feature_maps(images)[1]
    assert kept.shape[-1] == 2 * strided.shape[-1]


@pytest.mark.parametrize("name, size", [("timm-resnet", [64, 48]), ("timm-swinv2", [64, 64])])
def test_saved_model_is_a_timm_checkpoint_of_the_trained_backbone(tiny_zoo, name, size, tmp_path):
    import json

    import timm

    architecture, args = backbone_spec(f"tiny:{name}")
    model = ReIDModel(architecture=architecture, backbone_args=args, num_classes=5, image_size=size)
    model.load_backbone(f"tiny:{name}")
    with torch.no_grad():  # weights unlike the zoo's, as after training
        for parameter in model.backbone.parameters():
            parameter.add_(0.01)
    model.eval().save_pretrained(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "reid_heads.safetensors"]  # no pickle

    backbone = timm.create_model(f"local-dir:{tmp_path / 'model'}", pretrained=True)
    trained = model.backbone.state_dict()
    classifier = model.classifier_name + "."
    assert {k for k in backbone.state_dict() if not k.startswith(classifier)} == trained.keys()
    assert all(torch.equal(backbone.state_dict()[key], value) for key, value in trained.items())
    data = timm.data.resolve_data_config(model=backbone)
    assert data["input_size"] == (3, *size)
    assert tuple(data["mean"]) == (0.485, 0.456, 0.406) and tuple(data["std"]) == (0.229, 0.224, 0.225)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["architecture"] == architecture and config["reid"]["num_classes"] == 5
    assert "license" not in config["pretrained_cfg"]  # not the ImageNet tag's metadata

    again = ReIDModel.from_pretrained(tmp_path / "model")
    images = torch.randn(2, 3, *size)
    torch.testing.assert_close(again.extract(images), model.extract(images))
    assert again.head.classifier.out_features == 5  # the re-ID config, not timm's num_classes (the embedding's)


def randomize_heads(model: ReIDModel, seed: int = 0) -> None:
    """Neck statistics and affine weights unlike a fresh BatchNorm's, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.backbone.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
        for head in (model.head, model.aux_head):
            neck = head.neck
            neck.running_mean.copy_(torch.randn(neck.num_features, generator=generator))
            neck.running_var.copy_(torch.rand(neck.num_features, generator=generator) + 0.5)
            neck.weight.copy_(torch.rand(neck.num_features, generator=generator) + 0.5)
            neck.bias.copy_(torch.randn(neck.num_features, generator=generator))


@pytest.mark.parametrize("name", ["timm-resnet", "timm-densenet", "timm-swinv2"])
def test_timm_alone_loads_the_evaluation_embedding(tiny_zoo, name, tmp_path):
    """`timm.create_model("local-dir:...", pretrained=True)` with no vehicle-diff code returns the features the
    evaluation ranks with: last stride 1 as timm's output_stride, the BN-neck folded into timm's classifier."""
    import timm

    architecture, args = backbone_spec(f"tiny:{name}")
    model = ReIDModel(architecture=architecture, backbone_args=args, num_classes=5, image_size=[64, 64])
    model.load_backbone(f"tiny:{name}")
    randomize_heads(model)
    model.eval().save_pretrained(tmp_path / "model")

    timm_model = timm.create_model(f"local-dir:{tmp_path / 'model'}", pretrained=True).eval()
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = timm_model(images)
    cosine = torch.nn.functional.cosine_similarity(features, model.extract(images), dim=1)
    assert cosine.min() >= 0.9999, cosine
    assert features.shape[1] == model.head.neck.num_features


def test_last_stride_one_is_timms_output_stride_where_the_family_takes_it():
    """Full-size architectures, built on the meta device: ResNet-50 runs its last stage at stride 16 through timm's
    own argument, DenseNet-121 and SwinV2 have no such argument and keep theirs."""
    from vehicle_diff.training.reid_model import timm_model_args

    assert timm_model_args("resnet50", {}, last_stride_1=True) == {"output_stride": 16}
    assert timm_model_args("resnet50", {}, last_stride_1=False) == {}
    assert timm_model_args("densenet121", {}, last_stride_1=True) == {}
    assert timm_model_args("swinv2_base_window12_192", {}, last_stride_1=True) == {}
    with torch.device("meta"):
        model = ReIDModel(architecture="resnet50", num_classes=576)
        feature_map = model.feature_maps(torch.empty(1, 3, 256, 256))[1]
    assert feature_map.shape == (1, 2048, 16, 16)


def test_evaluation_normalises_as_training_did_from_the_saved_data_config(tmp_path):
    """timm's test_resnet normalises with mean = std = 0.5, not ImageNet's: training uses it, the saved
    config.json carries it, and the reloaded model's evaluation transform applies it."""
    import json

    from PIL import Image
    from vehicle_diff.training.evaluate import eval_transform_of

    model = ReIDModel("test_resnet", num_classes=3, aux_head=False, image_size=[32, 32])
    assert model.mean == model.std == (0.5, 0.5, 0.5)
    model.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["pretrained_cfg"]
    assert saved["mean"] == saved["std"] == [0.5, 0.5, 0.5]
    reloaded = ReIDModel.from_pretrained(tmp_path / "model")
    gray = eval_transform_of(reloaded)(Image.new("RGB", (40, 40), (255, 255, 255)))
    assert gray.shape == (3, 32, 32) and torch.allclose(gray, torch.ones_like(gray))  # (1 - 0.5) / 0.5


def test_the_ide_baseline_has_no_bn_neck_and_cross_entropy_alone(tmp_path):
    """VehicleX's IDE: the pooled feature feeds the classifier and is the retrieval feature; the loss is
    cross-entropy only. Both survive a save and reload."""
    import torch.nn.functional as F
    from vehicle_diff.training.reid_model import reid_loss

    model = ReIDModel("test_resnet", num_classes=3, aux_head=False, image_size=[32, 32], bn_neck=False).eval()
    images = torch.rand(4, 3, 32, 32)
    outputs = model(images)
    assert torch.equal(outputs["embedding"], outputs["features"])
    assert torch.allclose(model.extract(images), F.normalize(outputs["embedding"], dim=1))
    labels = torch.tensor([0, 1, 2, 0])
    loss, parts = reid_loss(
        outputs, labels, label_smoothing=0.1, circle_m=0.25, circle_gamma=128, aux_weight=1, circle=False
    )
    assert set(parts) == {"ce"} and torch.isclose(loss, F.cross_entropy(outputs["logits"], labels, label_smoothing=0.1))
    model.save_pretrained(tmp_path / "ide")
    reloaded = ReIDModel.from_pretrained(tmp_path / "ide").eval()
    assert isinstance(reloaded.head.neck, torch.nn.Identity) and torch.allclose(
        reloaded.extract(images), model.extract(images)
    )
    import timm

    with torch.no_grad():  # timm alone gives the IDE embedding too: no neck, an identity classifier
        features = timm.create_model(f"local-dir:{tmp_path / 'ide'}", pretrained=True).eval()(images)
    assert torch.nn.functional.cosine_similarity(features, model.extract(images)).min() >= 0.9999
