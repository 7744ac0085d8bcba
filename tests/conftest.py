import os

import pytest

# No test may reach a model hub: these machines have none, and a test that needs one is a broken test.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["YOLO_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The tiny model zoo, built once per test session; `tiny:NAME` ids resolve into it."""
    from vehicle_diff.tiny_models import build_zoo

    zoo = build_zoo(tmp_path_factory.mktemp("zoo") / "tiny-models", seed=0)
    os.environ["VEHICLE_DIFF_TINY_MODELS"] = str(zoo)
    return zoo


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
