"""DiffSmooth's local smoothing: voting, the fixed local noise, and its use as a base classifier."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from msds_lightning.cli import main
from msds_lightning.models import DenoiseAndClassify, LocalSmoothing
from msds_lightning.results import read_results
from msds_lightning.smoothing import SELECTION, MultiScaleEngine, SmoothingEngine

from .conftest import REPO
from .tiny_models import tiny_classifier, tiny_denoiser

CONFIG = REPO / "configs" / "cifar10" / "certify_diffsmooth.yaml"


class Sequenced(torch.nn.Module):
    """Returns prepared logits [B, K], one tensor per call in turn, and records the batches it was given."""

    def __init__(self, logits: list[list[list[float]]]):
        super().__init__()
        self.logits = [torch.tensor(z) for z in logits]
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.logits[(len(self.inputs) - 1) % len(self.logits)]


class Recorder(torch.nn.Module):
    """Records its inputs and returns fixed logits (3 classes)."""

    def __init__(self):
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return torch.zeros(x.shape[0], 3)


def test_m1_without_local_noise_equals_the_plain_classifier():
    denoiser, classifier = tiny_denoiser("cosine", rescale_timesteps=True), tiny_classifier(seed=1)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def counts(f):
        engine = SmoothingEngine(DenoiseAndClassify(denoiser, f, 0.25), 10, 0.25, seed=3, batch_size=128)
        return engine.counts(images, [0, 1], 64, (SELECTION,))

    plain = counts(classifier)
    assert (plain > 0).sum() > 2  # several classes get votes: a wrong vote would show
    assert torch.equal(counts(LocalSmoothing(classifier, sigma=0, m=1)), plain)


# Copies 1 and 2 narrowly prefer class 0, copy 3 is sure of class 1: the majority says 0, the averaged
# softmax says 1 (about 0.35 vs 0.65).
NARROW, SURE = [[1.0, 0.9, -10.0]], [[0.0, 10.0, -10.0]]


def test_soft_vote_averages_softmax_and_hard_vote_counts():
    x = torch.zeros(1, 3, 4, 4)
    soft = LocalSmoothing(Sequenced([NARROW, NARROW, SURE]), sigma=0.1, m=3, vote="soft")(x)
    expected = torch.softmax(torch.tensor(NARROW * 2 + SURE), 1).mean(0, keepdim=True).log()
    torch.testing.assert_close(soft, expected)
    assert soft.argmax(1).tolist() == [1]

    hard = LocalSmoothing(Sequenced([NARROW, NARROW, SURE]), sigma=0.1, m=3, vote="hard")(x)
    assert hard.tolist() == [[2.0, 1.0, 0.0]]
    assert hard.argmax(1).tolist() == [0]


def test_hard_vote_tie_goes_to_the_lowest_class():
    # row 0: the copies vote 2 and 1, row 1: 0 and 2; the averaged softmax picks 2 for both
    logits = [[[0.0, 1.0, 5.0], [3.0, 0.0, 1.0]], [[0.0, 2.0, 1.0], [0.0, 1.0, 4.0]]]
    x = torch.zeros(2, 3, 4, 4)
    assert LocalSmoothing(Sequenced(logits), 0.1, m=2, vote="soft")(x).argmax(1).tolist() == [2, 2]
    hard = LocalSmoothing(Sequenced(logits), 0.1, m=2, vote="hard")(x)
    assert hard.tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]
    assert hard.argmax(1).tolist() == [1, 0]


def test_fixed_local_noise_is_seeded_and_shared_by_every_input_and_call():
    classifier = Recorder()
    local = LocalSmoothing(classifier, sigma=0.2, m=3)
    x1, x3 = torch.rand(1, 3, 4, 4), torch.rand(3, 3, 4, 4)
    local(x1), local(x3), local(x1)
    eta = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(42)) * 0.2
    assert len(classifier.inputs) == 9 and all(z.shape[0] in (1, 3) for z in classifier.inputs)
    for call, x in enumerate([x1, x3, x1]):
        for i in range(3):
            torch.testing.assert_close(classifier.inputs[3 * call + i] - x, eta[i].expand_as(x))
    assert torch.equal(local.noise(x3), eta)
    assert not torch.equal(LocalSmoothing(Recorder(), 0.2, m=3, noise_seed=7).noise(x1), eta)
    # a new image shape gets its own draw from the same seed; the dtype follows the input
    big = local.noise(torch.rand(2, 3, 8, 8, dtype=torch.float64))
    assert big.dtype == torch.float64
    torch.testing.assert_close(
        big, torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(42)).double() * 0.2
    )


def test_fresh_local_noise_differs_between_calls_and_rows():
    classifier = Recorder()
    local = LocalSmoothing(classifier, sigma=0.2, m=2, fixed_noise=False)
    x = torch.rand(1, 3, 4, 4).repeat(2, 1, 1, 1)  # two identical rows
    local(x), local(x)
    first, second = classifier.inputs[0] - x, classifier.inputs[2] - x
    assert not torch.allclose(first, second)
    assert not torch.allclose(first[0], first[1])
    assert 0.15 < torch.cat([z - x for z in classifier.inputs]).std() < 0.25
    with pytest.raises(RuntimeError, match="fixed_noise"):
        local.noise(x)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"sigma": -0.1}, "sigma"),
        ({"sigma": math.nan}, "sigma"),
        ({"m": 0}, "m"),
        ({"m": 2.5}, "m"),
        ({"vote": "majority"}, "vote"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, name):
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError, match=rf"^{name} .*{value}"):
        LocalSmoothing(Recorder(), **kwargs)


def test_base_classifier_of_the_multiscale_cascade():
    base = DenoiseAndClassify(tiny_denoiser("cosine"), LocalSmoothing(tiny_classifier(), 0.12, m=2))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    certs = MultiScaleEngine(base, 10, [0.5, 0.25], seed=0, batch_size=64).certify(
        images, [0, 1], 8, 32, 0.001
    )
    assert len(certs) == 2
    assert all(c.radius >= 0 and (c.prediction == -1 or 0 <= c.prediction < 10) for c in certs)


def test_cifar10_diffsmooth_config_end_to_end(tiny_assets: Path, tmp_path):
    output = tmp_path / "diffsmooth.tsv"
    inner = "--model.classifier.init_args.classifier.init_args"
    args = [
        "certify", "-c", str(CONFIG),
        f"--model.denoiser.init_args.path={tiny_assets / 'denoiser'}",
        f"{inner}.model_name=test_vit", f"{inner}.checkpoint={tiny_assets / 'classifier.safetensors'}",
        # input_size 32 = no resize (a nested `null` override reaches the class as the string "None")
        f"{inner}.input_size=32", f"{inner}.model_kwargs={{img_size: 32}}",
        "--model.classifier.init_args.m=2",
        "--model.n0=8", "--model.n=16", "--model.batch_size=48",
        f"--data.init_args.root={tiny_assets / 'cifar10'}", "--data.init_args.skip=1", "--data.init_args.max=3",
        "--data.init_args.batch_size=3", "--data.init_args.num_workers=0",
        f"--results.output={output}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    assert main(args) == 0
    res = read_results(output)
    assert res.idx.tolist() == [0, 1, 2]
    assert len(output.read_text().splitlines()) == 4  # header + 3 rows
