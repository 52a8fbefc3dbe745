"""LoRA adapters on a diffusers UNet (peft), and merging them back for export.

diffusers' ``UNet2DModel`` has no adapter mixin, so adapters are injected with peft's generic
``inject_adapter_in_model``. For export the adapters are merged into the base weights and the wrappers
removed, so the saved folder is a plain ``UNet2DModel`` that ``DiffusionDenoiser.from_pretrained`` loads.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj")


def add_lora(
    unet: nn.Module,
    r: int = 8,
    alpha: int | None = None,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
) -> nn.Module:
    """Inject LoRA adapters of rank ``r`` (scale ``alpha / r``, default alpha = r) into ``unet`` in place and
    freeze every other parameter. Returns ``unet``."""  # fmt: skip
    from peft import LoraConfig, inject_adapter_in_model

    if r < 1:
        raise ValueError(f"lora r must be >= 1, got {r}")
    present = {name.rsplit(".", 1)[-1] for name, _ in unet.named_modules()} | {
        n for n, _ in unet.named_modules()
    }
    targets = [t for t in target_modules if t in present or any(n.endswith("." + t) for n in present)]
    if not targets:
        raise ValueError(f"lora target_modules {list(target_modules)} match no module of the UNet")
    config = LoraConfig(r=r, lora_alpha=alpha or r, target_modules=targets, lora_dropout=dropout)
    inject_adapter_in_model(config, unet)
    for name, param in unet.named_parameters():
        param.requires_grad_("lora_" in name)
    return unet


def has_lora(module: nn.Module) -> bool:
    return any("lora_" in name for name, _ in module.named_parameters())


def merged_copy(unet: nn.Module) -> nn.Module:
    """A copy of ``unet`` with every LoRA adapter merged into its base layer and the wrappers removed."""
    from peft.tuners.lora import LoraLayer

    unet = copy.deepcopy(unet)
    for name, module in list(unet.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, attr = name.rpartition(".")
            parent = unet.get_submodule(parent_name) if parent_name else unet
            setattr(parent, attr, module.get_base_layer())
    for param in unet.parameters():
        param.requires_grad_(True)
    return unet
