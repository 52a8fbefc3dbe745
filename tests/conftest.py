"""Shared test helpers. Real data for tests lives in ../shared/fixtures (beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture
def shared_fixtures() -> Path:
    """../shared/fixtures: required in CI (it is always there), skipped for a bare clone elsewhere."""
    if not SHARED_FIXTURES.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_FIXTURES} is missing in CI")
        pytest.skip(f"{SHARED_FIXTURES} not present (it ships beside the checkout)")
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> Path:
    """A fake CIFAR-10 root (``cifar10``: 10 train / 12 test images), a tiny cosine-schedule denoiser
    folder (``denoiser``) and tiny timm ``test_vit`` weights (``classifier.safetensors``)."""
    from safetensors.torch import save_file

    from .tiny_models import tiny_classifier, tiny_denoiser, write_fake_cifar10

    root = tmp_path_factory.mktemp("tiny_assets")
    write_fake_cifar10(root / "cifar10", n_train=10, n_test=12)
    denoiser = tiny_denoiser(schedule="cosine", num_train_timesteps=4000, rescale_timesteps=True)
    denoiser.save_pretrained(root / "denoiser")
    save_file(tiny_classifier(seed=1).model.state_dict(), root / "classifier.safetensors")
    return root


@pytest.fixture(autouse=True)
def _few_threads():
    # 2-core CI machine: avoid oversubscription when pytest runs torch code.
    torch.set_num_threads(2)
    yield


class TemplateClassifier(torch.nn.Module):
    """Deterministic linear base classifier: logits_k = <x, t_k> for unit-norm templates t_k."""

    def __init__(self, num_classes: int = 10, shape=(3, 8, 8), seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        t = torch.randn(num_classes, *shape, generator=g)
        self.register_buffer("templates", t / t.flatten(1).norm(dim=1).view(-1, 1, 1, 1))

    def forward(self, x):
        return torch.einsum("bchw,kchw->bk", x, self.templates)

    def image(self, cls: int, strength: float) -> torch.Tensor:
        """An image in [0,1] leaning towards class ``cls`` with the given strength."""
        return (0.5 + strength * self.templates[cls]).clamp(0, 1)
