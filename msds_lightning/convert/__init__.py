"""Convert OpenAI improved-diffusion / guided-diffusion UNet checkpoints into diffusers denoiser folders.

Any UNet of the two libraries converts: :func:`convert_openai_checkpoint` with ``kind`` takes one of the two
released networks as they are, with ``model_flags`` it reads the architecture off the state dict
(:func:`infer_layout`) and takes the attention heads and the diffusion from the training script's flags
(:func:`parse_model_flags`); layouts diffusers' ``UNet2DModel`` cannot express are refused up front.

The two diffusion models of the papers are published as raw PyTorch state dicts of OpenAI's own
``UNetModel``: improved-diffusion's CIFAR-10 ``cifar10_uncond_50M_500K.pt`` (Carlini et al. 2023, MSDS) and
guided-diffusion's ``256x256_diffusion_uncond.pt`` (ImageNet). :func:`convert_openai_checkpoint` turns one
into a folder that :meth:`DiffusionDenoiser.from_pretrained` loads with no further options: ``unet/`` (a
diffusers ``UNet2DModel`` in safetensors), ``scheduler/`` (the ``DDPMScheduler`` of the training noise
schedule) and ``denoiser_config.json`` (``rescale_timesteps``, ``pad_to``).

How the two networks line up (both are the same ADM-style UNet):

* OpenAI ``input_blocks`` / ``middle_block`` / ``output_blocks`` are flat lists; diffusers groups the same
  modules per resolution level (``down_blocks[l].resnets/attentions/downsamplers``, ``mid_block``,
  ``up_blocks[u]...``). :func:`openai_to_diffusers` walks that structure (number of levels, layers per
  block, attention levels, convolution vs. ResBlock resampling) from a diffusers config.
* ResBlocks: ``in_layers.0/2`` → ``norm1/conv1``, ``emb_layers.1`` → ``time_emb_proj``, ``out_layers.0/3``
  → ``norm2/conv2``, ``skip_connection`` → ``conv_shortcut``; the scale/shift halves are in the same order.
* Attention: ``qkv`` is a 1×1 ``Conv1d`` with ``3C`` outputs. The legacy layout (both released checkpoints)
  groups them per head, ``[q_h, k_h, v_h]`` for head ``h``, so the weight is read as ``(heads, 3, head_dim,
  C)``; ``use_new_attention_order=True`` models group them as ``(3, heads, head_dim, C)``. ``proj_out`` →
  ``to_out.0`` and ``norm`` → ``group_norm``.
* Timesteps: the network embeds whatever value it is given. improved-diffusion fed it ``t·1000/T``
  (``rescale_timesteps=True``), guided-diffusion the integer ``t``; the converted folder records which.
"""

from msds_lightning.convert.checkpoint import (
    convert_openai_checkpoint,
    convert_openai_state_dict,
    load_openai_state_dict,
    openai_setup_from_flags,
)
from msds_lightning.convert.flags import LIBRARIES, ModelFlags, parse_model_flags
from msds_lightning.convert.infer import Layout, OpenAISetup, infer_layout, resolve_setup
from msds_lightning.convert.keymap import openai_to_diffusers
from msds_lightning.convert.kinds import (
    KINDS,
    CheckpointMismatchError,
    OpenAIKind,
    diffusers_config_from_openai,
)

__all__ = [
    "KINDS",
    "LIBRARIES",
    "CheckpointMismatchError",
    "Layout",
    "ModelFlags",
    "OpenAIKind",
    "OpenAISetup",
    "convert_openai_checkpoint",
    "convert_openai_state_dict",
    "diffusers_config_from_openai",
    "infer_layout",
    "load_openai_state_dict",
    "openai_setup_from_flags",
    "openai_to_diffusers",
    "parse_model_flags",
    "resolve_setup",
]
