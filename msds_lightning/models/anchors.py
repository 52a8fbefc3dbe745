"""The released classifiers of the field's papers, as timm model names that load the authors' files as they are.

Each name is registered in timm's factory with a checkpoint filter that maps the authors' key layout onto
ours, so ``Classifier(model_name=..., checkpoint=<the downloaded file>)`` loads it through timm's usual
``pretrained_cfg_overlay=dict(file=...)`` path: ``torch.load(weights_only=True)`` (no pickled code runs) or
safetensors. The input normalisation each network was trained with is in the name's pretrained config, so
:class:`~msds_lightning.models.Classifier` (``mean``/``std`` left at ``None``) applies it once, on [0, 1]
pixels, where the authors had a normalisation layer inside the network (none of these files stores its
constants: they are plain attributes, not buffers).

* ``cohen_cifar_resnet110`` / ``cohen_cifar_resnet20``: Cohen et al. (2019)'s CIFAR-10 ResNets
  (locuslab/smoothing ``archs/cifar_resnet.py``: 3 stages of BasicBlocks at widths 16/32/64, 1×1-conv+BN
  projection shortcuts, global average pool), from their ``checkpoint.pth.tar``
  (``{"arch": "cifar_resnet110", "state_dict": {"1.conv1.weight", ...}, "optimizer": ...}``: index 0 of
  their ``Sequential`` is ``NormalizeLayer``). DiffSmooth certifies these same files. Normalisation:
  mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010).
* ``cohen_resnet50``: their ImageNet ResNet-50 (torchvision's, inside ``DataParallel``: keys
  ``1.module.conv1.weight``, ...) as timm's ``resnet50`` (the same network and key names). Normalisation:
  mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
* ``hf_vit_base_patch16_224``: a Hugging Face *transformers* ``ViTForImageClassification`` checkpoint
  (``vit.embeddings...``, ``vit.encoder.layer.N...``, ``classifier.weight``; ``pytorch_model.bin`` or
  ``model.safetensors``), e.g. Carlini et al.'s CIFAR-10 classifier
  ``aaraki/vit-base-patch16-224-in21k-finetuned-cifar10``, as timm's ViT-B/16 with transformers'
  LayerNorm ε = 1e-12. Normalisation: mean = std = 0.5 (inputs in [-1, 1]). ``model_kwargs`` change the
  size (``depth``, ``embed_dim``, ``num_heads``, ``img_size``, ``patch_size``) for other ViT checkpoints.

DM-Improves-AT's Swish WideResNets load into :mod:`msds_lightning.models.wrn`'s ``wrn28_10_swish`` /
``wrn70_16_swish`` (their filter lives there).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as timm_vit_filter
from torch import nn

COHEN_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
COHEN_CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------------
# Cohen et al.'s checkpoint.pth.tar
# ----------------------------------------------------------------------------------------------------


def _unwrap(checkpoint: dict[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def cohen_checkpoint_filter(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Keys of locuslab/smoothing's ``Sequential(NormalizeLayer, net)`` (``1.`` prefix, ``1.module.`` for
    the ``DataParallel`` ResNet-50) → the bare network's keys. Already bare keys pass unchanged."""
    state_dict = _unwrap(state_dict, "state_dict")
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = key[2:] if key.startswith("1.") else key
        key = key[7:] if key.startswith("module.") else key
        if key.startswith("0."):
            raise ValueError(
                f"checkpoint key {key!r}: a module with weights before the classifier; Cohen et al.'s layout "
                f"has only the weightless NormalizeLayer there ('1.' prefixes the network)"
            )
        out[key] = value
    return out


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of Cohen et al. (depth = 6n + 2 with BasicBlocks; 110 → n = 18), their key names.

    Their network ends in ``AvgPool2d(8)`` on the 8×8 map of a 32 px input; this one averages globally,
    which is the same there and also runs other sizes."""

    def __init__(self, depth: int = 110, num_classes: int = 10, in_chans: int = 3, **_: Any):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (e.g. 20, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.num_classes, self.num_features = num_classes, 64
        self.conv1 = nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        widths, in_planes = (16, 32, 64), 16
        for stage, (planes, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            blocks = [
                _BasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                for i in range(n)
            ]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            in_planes = planes
        self.fc = nn.Linear(64, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)


# ----------------------------------------------------------------------------------------------------
# Hugging Face transformers ViTForImageClassification
# ----------------------------------------------------------------------------------------------------

_HF_VIT_RENAMES = (
    (r"^vit\.embeddings\.cls_token$", "cls_token"),
    (r"^vit\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^vit\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^vit\.encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^vit\.encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^vit\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^vit\.encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^vit\.encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^vit\.layernorm\.", "norm."),
    (r"^classifier\.", "head."),
)
_HF_VIT_QKV = re.compile(
    r"^vit\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$"
)


def hf_vit_checkpoint_filter(state_dict: dict[str, Any], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """transformers ``ViTForImageClassification`` keys → timm ``VisionTransformer`` keys (query, key and
    value concatenated into ``qkv`` in that order), then timm's own ViT filter (position-embedding
    resampling for another ``img_size``). A timm-layout state dict passes to timm's filter unchanged."""
    state_dict = _unwrap(state_dict, "model", "state_dict")
    if not any(key.startswith("vit.") for key in state_dict):
        return timm_vit_filter(state_dict, model)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _HF_VIT_QKV.match(key)
        if match:
            qkv.setdefault((match[1], match[3]), {})[match[2]] = value
            continue
        if key.startswith("vit.pooler.") or key == "vit.embeddings.mask_token":
            continue  # ViTModel's pooler and masked-image-modeling token: unused by image classification
        for pattern, replacement in _HF_VIT_RENAMES:
            new_key, found = re.subn(pattern, replacement, key)
            if found:
                out[new_key] = value
                break
        else:
            raise ValueError(
                f"checkpoint key {key!r} is not part of a transformers ViTForImageClassification"
            )
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"checkpoint layer {layer}: attention {kind} lacks one of query/key/value")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return timm_vit_filter(out, model)


# ----------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return dict(crop_pct=1.0, interpolation="bilinear", **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "cohen_cifar_resnet110.locuslab": _cfg(num_classes=10, input_size=(3, 32, 32), mean=COHEN_CIFAR10_MEAN,
                                               std=COHEN_CIFAR10_STD, first_conv="conv1", classifier="fc"),
        "cohen_cifar_resnet20.locuslab": _cfg(num_classes=10, input_size=(3, 32, 32), mean=COHEN_CIFAR10_MEAN,
                                              std=COHEN_CIFAR10_STD, first_conv="conv1", classifier="fc"),
        "cohen_resnet50.locuslab": _cfg(num_classes=1000, input_size=(3, 224, 224), mean=IMAGENET_MEAN,
                                        std=IMAGENET_STD, first_conv="conv1", classifier="fc"),
        "hf_vit_base_patch16_224.transformers": _cfg(num_classes=1000, input_size=(3, 224, 224), mean=(0.5,) * 3,
                                                     std=(0.5,) * 3, first_conv="patch_embed.proj",
                                                     classifier="head"),
    }
)  # fmt: skip


def _cifar_resnet(variant: str, depth: int, pretrained: bool, **kwargs: Any) -> CifarResNet:
    return build_model_with_cfg(
        CifarResNet, variant, pretrained, depth=depth, pretrained_filter_fn=cohen_checkpoint_filter, **kwargs
    )


@register_model
def cohen_cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _cifar_resnet("cohen_cifar_resnet110", 110, pretrained, **kwargs)


@register_model
def cohen_cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _cifar_resnet("cohen_cifar_resnet20", 20, pretrained, **kwargs)


@register_model
def cohen_resnet50(pretrained: bool = False, **kwargs: Any) -> ResNet:
    return build_model_with_cfg(
        ResNet, "cohen_resnet50", pretrained, block=Bottleneck, layers=(3, 4, 6, 3),
        pretrained_filter_fn=cohen_checkpoint_filter, **kwargs,
    )  # fmt: skip


@register_model
def hf_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    args = dict(
        patch_size=16, embed_dim=768, depth=12, num_heads=12, norm_layer=partial(nn.LayerNorm, eps=1e-12)
    )
    return build_model_with_cfg(
        VisionTransformer, "hf_vit_base_patch16_224", pretrained,
        pretrained_filter_fn=hf_vit_checkpoint_filter, **{**args, **kwargs},
    )  # fmt: skip
