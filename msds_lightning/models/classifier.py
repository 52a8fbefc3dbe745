"""Base classifiers for randomized smoothing.

Smoothing noise is added to the raw image in [0, 1] pixel units, so every preprocessing step after that
(upsampling, normalization, denoising) must be part of the classifier being smoothed. :class:`Classifier`
therefore takes [0, 1] pixels and does its own resizing and normalization, and :class:`DenoiseAndClassify`
is the full base classifier ``f(x + δ) = classifier(denoiser(x + δ, σ))`` of denoised smoothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config
from torch import nn

from msds_lightning.models.denoiser import DiffusionDenoiser

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
_ANTIALIASED = ("bilinear", "bicubic")  # the modes F.interpolate can antialias


class Classifier(nn.Module):
    """A timm image classifier fed with [0, 1] pixels: ``resize → normalize → model``.

    Args:
        model_name: timm model name, e.g. ``"vit_base_patch16_224"`` or ``"beit_large_patch16_512"``, or a
            timm model on the Hugging Face Hub: ``"hf-hub:timm/vit_base_patch16_224.augreg_in21k"`` or the
            same without ``hf-hub:`` (any ``"org/name"``), whose architecture and normalisation come from the
            repo's ``config.json`` (resolved by ``huggingface_hub``: cache, ``HF_HUB_OFFLINE``, ``HF_TOKEN``).
            The anchors' released classifiers have names of their own (:mod:`msds_lightning.models.anchors`:
            ``cohen_cifar_resnet110``, ``cohen_resnet50``, ``hf_vit_base_patch16_224``; DM-Improves-AT's
            WideResNets load into ``wrn28_10_swish`` / ``wrn70_16_swish``).
        num_classes: number of output logits.
        pretrained: load timm's pretrained weights (for a Hub name: the repo's ``model.safetensors``).
        checkpoint: path to a local weight file (``.safetensors`` preferred; ``.pth``/``.pt``/``.bin`` are read
            with ``torch.load(weights_only=True)``) holding a state dict of the timm model, optionally nested
            under ``state_dict``/``model``/``model_ema``/``state_dict_ema`` as timm understands. Implies
            ``pretrained=True`` (it is passed to timm as ``pretrained_cfg_overlay=dict(file=checkpoint)``, so
            timm's own checkpoint filters, e.g. position-embedding resampling, apply).
        checkpoint_num_classes: classes of the checkpoint's head. ``None`` means ``num_classes`` and the head
            is loaded; if it differs, the head is dropped and freshly initialised (fine-tuning start).
        input_size: resize inputs to ``input_size × input_size`` (or ``(H, W)``) before the model; ``None``
            keeps the input resolution. E.g. 224 to run a ViT-B/16 on 32 px CIFAR-10 images.
        mean: per-channel mean subtracted from the [0, 1] pixels. ``None`` takes the timm model's pretrained
            config (``timm.data.resolve_model_data_config``). CIFAR-10: ``(0.4914, 0.4822, 0.4465)``;
            ``(0.5, 0.5, 0.5)`` with std ``(0.5, 0.5, 0.5)`` maps to [-1, 1] like the diffusion model.
        std: per-channel std the pixels are divided by (``None``: the pretrained config's). CIFAR-10:
            ``(0.2023, 0.1994, 0.2010)``.
        interpolation: resize mode, one of ``"bicubic"`` (default), ``"bilinear"``, ``"nearest"``, ``"area"``.
        antialias: ``F.interpolate``'s ``antialias`` for the resize. ``None`` (default): on for bilinear and
            bicubic (like Carlini et al.), off otherwise. ``False`` is torchvision's tensor ``Resize`` without
            antialiasing, MSDS's classifier input (32 → 224 bicubic differs from the antialiased resize by up to
            0.108 per pixel). ``True`` is only valid for bilinear/bicubic.
        model_kwargs: extra ``timm.create_model`` keyword arguments (``img_size``, ``drop_path_rate``, ...).

    ``forward(x)`` takes [B, C, H, W] floats in [0, 1] (noisy inputs may leave the range) and returns
    [B, num_classes] logits.
    """

    def __init__(
        self,
        model_name: str,
        num_classes: int,
        pretrained: bool = False,
        checkpoint: str | Path | None = None,
        checkpoint_num_classes: int | None = None,
        input_size: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str = "bicubic",
        model_kwargs: dict[str, Any] | None = None,
        antialias: bool | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        model_name = timm_model_name(model_name)
        model = _create_timm_model(
            model_name, num_classes, pretrained, checkpoint, checkpoint_num_classes, dict(model_kwargs or {})
        )
        self.model_name = model_name  # for messages
        if mean is None or std is None:
            data_config = resolve_model_data_config(model)
            mean = data_config["mean"] if mean is None else mean
            std = data_config["std"] if std is None else std
        self._setup(model, mean, std, input_size, interpolation, antialias)

    @classmethod
    def from_module(
        cls,
        net: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_size: int | Sequence[int] | None = None,
        interpolation: str = "bicubic",
        antialias: bool | None = None,
    ) -> Classifier:
        """Wrap any ``nn.Module`` mapping normalized images to logits (custom nets, tests).

        ``mean``/``std`` both ``None`` means no normalization; the other arguments are as in the constructor.
        """
        if (mean is None) != (std is None):
            raise ValueError(
                "mean and std must be given together (or both left as None for no normalization)"
            )
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(net, mean, std, input_size, interpolation, antialias)
        return self

    def _setup(
        self,
        model: nn.Module,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        input_size: int | Sequence[int] | None,
        interpolation: str,
        antialias: bool | None = None,
    ) -> None:
        self.model = model
        self.num_classes = getattr(model, "num_classes", None)
        self.input_size = _as_size(input_size)
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
        self.interpolation = interpolation
        if antialias is None:
            antialias = interpolation in _ANTIALIASED
        elif not isinstance(antialias, bool):
            raise ValueError(f"antialias must be true, false or None, got {antialias!r}")
        elif antialias and interpolation not in _ANTIALIASED:
            raise ValueError(
                f"antialias=True needs interpolation 'bilinear' or 'bicubic' (torch has no antialiased "
                f"{interpolation!r} resize)"
            )
        self.antialias = antialias
        if mean is None:
            self.mean = self.std = None
            return
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if mean_t.shape != std_t.shape:
            raise ValueError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        # Not persistent: normalization is configuration, and a checkpoint must not silently override it.
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Resize (if ``input_size`` is set) and normalize [0, 1] pixels into the model's input space."""
        if x.ndim != 4:
            raise ValueError(f"x: expected a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation, antialias=self.antialias)
        if self.mean is not None:
            if x.shape[1] != self.mean.shape[1]:
                raise ValueError(f"x: expected {self.mean.shape[1]} channels (len(mean)), got {x.shape[1]}")
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))

    def extra_repr(self) -> str:
        mean = None if self.mean is None else tuple(round(v, 4) for v in self.mean.flatten().tolist())
        std = None if self.std is None else tuple(round(v, 4) for v in self.std.flatten().tolist())
        return (
            f"input_size={self.input_size}, interpolation={self.interpolation!r}, antialias={self.antialias}, "
            f"mean={mean}, std={std}"
        )


class DenoiseAndClassify(nn.Module):
    """The base classifier of denoised smoothing: ``logits = classifier(denoiser(x_noisy, σ))``.

    The smoothing noise is *not* added here; the certifier adds ``δ ~ N(0, σ²I)`` and calls this module on
    ``x + δ`` (pixels in [0, 1] units). ``sigma`` (std in [0, 1] pixel units) is fixed at construction or
    passed per call; a per-call value wins.
    """

    def __init__(
        self, denoiser: DiffusionDenoiser, classifier: nn.Module, sigma: float | None = None
    ) -> None:
        super().__init__()
        if sigma is not None and not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.denoiser = denoiser
        self.classifier = classifier
        self.sigma = sigma

    def forward(self, x_noisy: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, H, W] noisy pixels (``x + δ``, [0, 1] units) → [B, num_classes] logits."""
        if sigma is None:
            sigma = self.sigma
        if sigma is None:
            raise ValueError("sigma: not given and no default was set at construction")
        return self.classifier(self.denoiser(x_noisy, sigma))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def timm_model_name(name: str) -> str:
    """``name`` as ``timm.create_model`` takes it: a Hub repo id (``"timm/resnet18.a1_in1k"``, any
    ``"org/name"``, optionally ``@revision``) gets timm's ``hf-hub:`` prefix; other names are unchanged."""
    from ..hub import is_repo_id

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or "/" not in name:
        return name
    if not is_repo_id(name.split("@", 1)[0]):
        raise ValueError(
            f"model_name {name!r} is neither a timm model name nor a Hugging Face Hub repo id ('org/name')"
        )
    return "hf-hub:" + name


def _create_timm_model(
    model_name: str,
    num_classes: int,
    pretrained: bool,
    checkpoint: str | Path | None,
    checkpoint_num_classes: int | None,
    model_kwargs: dict[str, Any],
) -> nn.Module:
    if checkpoint is None:
        return timm.create_model(model_name, num_classes=num_classes, pretrained=pretrained, **model_kwargs)

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Classifier checkpoint not found: {path}")
    from ..runs import checkpoint_format

    if checkpoint_format(path) is None:
        raise OSError(
            f"Classifier checkpoint {path} is neither a safetensors file nor a torch.save checkpoint"
        )
    overlay = dict(model_kwargs.pop("pretrained_cfg_overlay", None) or {})
    # timm drops the checkpoint's head whenever num_classes differs from the pretrained config's, so tell it
    # how many classes the file's head has.
    overlay.update(file=str(path), num_classes=checkpoint_num_classes or num_classes)
    try:
        return timm.create_model(
            model_name,
            num_classes=num_classes,
            pretrained=True,
            pretrained_cfg_overlay=overlay,
            **model_kwargs,
        )
    except Exception as err:  # safetensors, torch.load and load_state_dict raise a variety of types
        raise OSError(
            f"Could not load classifier checkpoint {path} into timm model {model_name!r}: {err}"
        ) from err


def _as_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be a positive int or (height, width), got {size}")
    return size
