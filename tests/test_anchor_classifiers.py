"""The anchors' released classifiers load from files in exactly their authors' key layouts (random weights
here) and compute what the authors' networks compute, checked against independent re-implementations of
those networks written below with the authors' module names (so their ``state_dict`` *is* the layout)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

from msds_lightning.models import Classifier


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and batch-norm statistics (so that a wrong key, transpose or order shows), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=g) * 0.2
                if name.endswith("running_var"):
                    values = values.abs() + 0.5
                tensor.copy_(values)
    return module.eval()


def pixels(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------
# Cohen et al.: Sequential(NormalizeLayer, net) saved as {"arch", "state_dict", "optimizer", "epoch"}
# ----------------------------------------------------------------------------------------------------


class NormalizeLayer(nn.Module):
    """Their first layer: (x - mean) / std with plain tensor attributes (no state-dict entries)."""

    def __init__(self, mean, std):
        super().__init__()
        self.means, self.sds = torch.tensor(mean), torch.tensor(std)

    def forward(self, x):
        return (x - self.means.view(1, -1, 1, 1)) / self.sds.view(1, -1, 1, 1)


class RefBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + residual)


class RefCifarResNet(nn.Module):
    """bearpaw's CIFAR ResNet as locuslab/smoothing ships it: 3x3 stem (16), 3 stages, AvgPool2d(8), fc."""

    def __init__(self, depth, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [RefBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [RefBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(self.avgpool(x).flatten(1))


def cohen_checkpoint(path, arch, model):
    """Write the file as their train.py does (with the SGD state: momentum buffers, param groups), in the
    pre-1.6 (non-zip) torch.save format of 2019. lr = 0 and eval mode: the weights stay as they are."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)
    model.eval()(torch.rand(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    checkpoint = {
        "epoch": 90,
        "arch": arch,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    return path


CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]


def test_cohen_cifar_resnet_matches_their_network_and_normalises_once(tmp_path):
    reference = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), randomize_(RefCifarResNet(20), seed=1))
    assert next(iter(reference.state_dict())) == "1.conv1.weight"  # the NormalizeLayer stores nothing
    path = cohen_checkpoint(tmp_path / "checkpoint.pth.tar", "cifar_resnet20", reference)
    # a pickle holding only tensors, str, int, float, bool and containers: weights_only loads it
    loaded = torch.load(path, weights_only=True)
    assert loaded["arch"] == "cifar_resnet20" and loaded["optimizer"]["state"]

    classifier = Classifier("cohen_cifar_resnet20", 10, checkpoint=path).eval()
    x = pixels(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), reference(x), rtol=1e-4, atol=1e-5)


def test_cohen_cifar_resnet110_layout_loads(tmp_path):
    reference = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), RefCifarResNet(110))
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"arch": "cifar_resnet110", "state_dict": reference.state_dict()}, path,
               _use_new_zipfile_serialization=False)  # fmt: skip
    classifier = Classifier("cohen_cifar_resnet110", 10, checkpoint=path)
    assert sum(p.numel() for p in classifier.parameters()) == 1_730_714
    assert set(classifier.model.state_dict()) == {k[2:] for k in reference.state_dict()}


@pytest.mark.slow  # two 25M-parameter networks and a 100 MB file: ~10 s
def test_cohen_imagenet_resnet50_matches_torchvision(tmp_path):
    net = randomize_(torchvision.models.resnet50(num_classes=1000), seed=2)
    reference = nn.Sequential(
        NormalizeLayer([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), nn.DataParallel(net)
    )
    assert next(iter(reference.state_dict())) == "1.module.conv1.weight"
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet50", "state_dict": reference.state_dict()}, path,
               _use_new_zipfile_serialization=False)  # fmt: skip
    classifier = Classifier("cohen_resnet50", 1000, checkpoint=path).eval()
    x = pixels(2, 64, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), reference.eval()(x), rtol=1e-4, atol=1e-4)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"arch": "cifar_resnet20", "state_dict": {}, "model": RefCifarResNet(20)}, path)
    with pytest.raises(OSError, match="checkpoint.pth.tar"):
        Classifier("cohen_cifar_resnet20", 10, checkpoint=path)


# ----------------------------------------------------------------------------------------------------
# DM-Improves-AT: DataParallel(Sequential(WideResNet-Swish)), {"model_state_dict": ...}
# ----------------------------------------------------------------------------------------------------


class RefDMBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_planes, momentum=0.01)
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes, momentum=0.01)
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False) if self.has_shortcut else None
        )
        self.stride = stride

    def forward(self, x):
        a = F.silu(self.batchnorm_0(x))
        v = F.pad(a, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(F.silu(self.batchnorm_1(self.conv_0(v))))
        return out + (self.shortcut(a) if self.has_shortcut else x)


class RefDMGroup(nn.Module):
    def __init__(self, n, in_planes, out_planes, stride):
        super().__init__()
        self.block = nn.Sequential(
            *[
                RefDMBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(n)
            ]
        )

    def forward(self, x):
        return self.block(x)


class RefDMWideResNet(nn.Module):
    """Gowal et al.'s WRN with Swish as DM-Improves-AT ports it; normalisation inside, constants not saved."""

    def __init__(self, depth, width, num_classes, mean, std):
        super().__init__()
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        c = [16, 16 * width, 32 * width, 64 * width]
        n = (depth - 4) // 6
        self.init_conv = nn.Conv2d(3, c[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(
            RefDMGroup(n, c[0], c[1], 1), RefDMGroup(n, c[1], c[2], 2), RefDMGroup(n, c[2], c[3], 2)
        )
        self.batchnorm = nn.BatchNorm2d(c[3], momentum=0.01)
        self.logits = nn.Linear(c[3], num_classes)

    def forward(self, x):
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        return self.logits(F.avg_pool2d(F.silu(self.batchnorm(out)), 8).flatten(1))


@pytest.mark.parametrize(
    ("model_name", "mean", "std", "num_classes"),
    [
        ("wrn16_4_swish", (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), 10),
        ("wrn16_4_swish", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100),
    ],
)
def test_dm_improves_at_wideresnet_matches_their_network(tmp_path, model_name, mean, std, num_classes):
    net = randomize_(RefDMWideResNet(16, 4, num_classes, mean, std), seed=4)
    wrapped = nn.DataParallel(nn.Sequential(net))
    assert next(iter(wrapped.state_dict())) == "module.0.init_conv.weight"
    path = tmp_path / "cifar_linf_wrn16-4.pt"
    torch.save(
        {"model_state_dict": wrapped.state_dict(), "unaveraged_model_state_dict": wrapped.state_dict()}, path
    )
    # CIFAR-100: their constants come with the mean/std the config passes (the .dm_at_cifar100 tag of
    # wrn28_10_swish / wrn70_16_swish holds them; checked below)
    kwargs = {} if num_classes == 10 else {"mean": mean, "std": std}
    classifier = Classifier(model_name, num_classes, checkpoint=path, **kwargs).eval()
    x = pixels(3, 32, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), net(x), rtol=1e-4, atol=1e-5)


def test_dm_improves_at_tags_hold_their_normalisation():
    cifar100 = timm.models.get_pretrained_cfg("wrn28_10_swish.dm_at_cifar100")
    assert (cifar100.mean, cifar100.std, cifar100.num_classes) == (
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100,
    )  # fmt: skip
    cifar10 = timm.models.get_pretrained_cfg("wrn70_16_swish.dm_at_cifar10")
    assert (cifar10.mean, cifar10.std) == ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))


def test_dm_improves_at_normalize_run_is_refused(tmp_path):
    net = RefDMWideResNet(16, 4, 10, (0.5,) * 3, (0.5,) * 3)
    state = {f"module.1.{k}": v for k, v in net.state_dict().items()}
    torch.save({"model_state_dict": state}, tmp_path / "w.pt")
    with pytest.raises(OSError, match="--normalize"):
        Classifier("wrn16_4_swish", 10, checkpoint=tmp_path / "w.pt")


# ----------------------------------------------------------------------------------------------------
# Hugging Face transformers ViTForImageClassification
# ----------------------------------------------------------------------------------------------------


class RefHFSelfAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (
            f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.query, self.key, self.value)
        )
        weights = (q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)).softmax(-1)
        return (weights @ v).transpose(1, 2).reshape(b, n, d)


class RefHFAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.attention = RefHFSelfAttention(d, heads)
        self.output = nn.Module()
        self.output.dense = nn.Linear(d, d)

    def forward(self, x):
        return self.output.dense(self.attention(x))


class RefHFLayer(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(d, eps=1e-12)
        self.attention = RefHFAttention(d, heads)
        self.layernorm_after = nn.LayerNorm(d, eps=1e-12)
        self.intermediate, self.output = nn.Module(), nn.Module()
        self.intermediate.dense, self.output.dense = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class RefHFViT(nn.Module):
    """transformers' ViTForImageClassification: its module names, CLS token after the last LayerNorm."""

    def __init__(self, image=32, patch=8, d=32, depth=2, heads=2, hidden=64, num_classes=10):
        super().__init__()
        self.vit = nn.Module()
        self.vit.embeddings = nn.Module()
        self.vit.embeddings.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.vit.embeddings.position_embeddings = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, d))
        self.vit.embeddings.patch_embeddings = nn.Module()
        self.vit.embeddings.patch_embeddings.projection = nn.Conv2d(3, d, patch, patch)
        self.vit.encoder = nn.Module()
        self.vit.encoder.layer = nn.ModuleList([RefHFLayer(d, heads, hidden) for _ in range(depth)])
        self.vit.layernorm = nn.LayerNorm(d, eps=1e-12)
        self.classifier = nn.Linear(d, num_classes)

    def forward(self, pixel_values):  # normalised pixels, as the transformers pipeline feeds them
        e = self.vit.embeddings
        tokens = e.patch_embeddings.projection(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([e.cls_token.expand(len(tokens), -1, -1), tokens], 1) + e.position_embeddings
        for layer in self.vit.encoder.layer:
            x = layer(x)
        return self.classifier(self.vit.layernorm(x)[:, 0])


TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


@pytest.mark.parametrize("file_name", ["pytorch_model.bin", "model.safetensors"])
def test_transformers_vit_matches_their_network(tmp_path, file_name):
    reference = randomize_(RefHFViT(), seed=6)
    state = reference.state_dict()
    assert "vit.encoder.layer.1.attention.attention.query.weight" in state and "classifier.weight" in state
    path = tmp_path / file_name
    if file_name.endswith(".bin"):
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    classifier = Classifier("hf_vit_base_patch16_224", 10, checkpoint=path, model_kwargs=TINY_VIT).eval()
    x = pixels(3, 32, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), reference(2 * x - 1), rtol=1e-4, atol=1e-5)


def test_transformers_vit_unknown_key_is_named(tmp_path):
    state = RefHFViT().state_dict()
    state["vit.encoder.layer.0.crossattention.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="crossattention"):
        Classifier(
            "hf_vit_base_patch16_224", 10, checkpoint=tmp_path / "pytorch_model.bin", model_kwargs=TINY_VIT
        )


def test_certify_cohen_config_with_their_checkpoint_layout(tiny_assets, tmp_path):
    """`msds certify -c configs/cifar10/certify_cohen.yaml` (no denoiser) on a file in their layout."""
    from msds_lightning.cli import main
    from msds_lightning.results import read_results

    from .conftest import REPO

    reference = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), randomize_(RefCifarResNet(20), seed=8))
    checkpoint = cohen_checkpoint(tmp_path / "checkpoint.pth.tar", "cifar_resnet20", reference)
    output = tmp_path / "cohen.tsv"
    args = [
        "certify", "-c", str(REPO / "configs" / "cifar10" / "certify_cohen.yaml"),
        "--model.classifier.init_args.model_name=cohen_cifar_resnet20",
        f"--model.classifier.init_args.checkpoint={checkpoint}",
        "--model.n0=8", "--model.n=32", "--model.batch_size=40",
        f"--data.init_args.root={tiny_assets / 'cifar10'}", "--data.init_args.skip=1", "--data.init_args.max=3",
        "--data.init_args.num_workers=0", f"--results.output={output}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    assert main(args) == 0
    assert read_results(output).idx.tolist() == [0, 1, 2]
