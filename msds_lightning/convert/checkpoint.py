"""Reading an OpenAI checkpoint file (tensors only: a file never runs code) and writing the converted
diffusers denoiser folder (``unet/``, ``scheduler/``, ``denoiser_config.json``)."""

from __future__ import annotations

import json
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .flags import ModelFlags, parse_model_flags
from .infer import OpenAISetup, infer_layout, resolve_setup
from .keymap import diffusers_shapes, key_plan, listing, mismatches, openai_shape, openai_to_diffusers
from .kinds import (
    KIND_DEFAULT,
    KINDS,
    CheckpointMismatchError,
    diffusers_config_from_openai,
    kind_spec,
)

# ------------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------------

_NESTED_KEYS = ("state_dict", "model", "ema")
CONVERSION_RECORD = "convert_openai.json"  # written beside the denoiser: source, kind or flags, configs


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_openai_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an OpenAI UNet checkpoint as a state dict of float32 CPU tensors.

    The file is read with ``torch.load(weights_only=True)`` (memory-mapped when it is in the zip format), so
    it may hold nothing but tensors and plain containers. Accepted: a raw state dict (as OpenAI publishes),
    or a dict holding one under ``"state_dict"``, ``"model"`` or ``"ema"``; a ``module.`` prefix on every key
    (``DataParallel``) is removed. Floating-point tensors are converted to float32.

    Raises ``FileNotFoundError`` / ``OSError`` (missing, unreadable or damaged file) or ``ValueError`` (no
    state dict inside), each naming the file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"OpenAI checkpoint not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"OpenAI checkpoint {path} is a directory; expected a .pt file")
    try:
        mmap = zipfile.is_zipfile(path)  # torch's zip format can be memory-mapped, legacy files cannot
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # pickle, zip and torch errors of all kinds: report them as a damaged file
        message = " ".join(str(err).split())
        if len(message) > 400:
            message = message[:400] + " ..."
        raise OSError(
            f"Could not read OpenAI checkpoint {path} (damaged, truncated or not a PyTorch file?): "
            f"{type(err).__name__}: {message}"
        ) from err

    state_dict = None
    if _is_tensor_dict(obj):
        state_dict = dict(obj)
    elif isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if _is_tensor_dict(obj.get(key)):
                state_dict = dict(obj[key])
                break
    if state_dict is None:
        found = (
            f"a dict with keys {sorted(map(str, obj))[:10]}"
            if isinstance(obj, Mapping)
            else type(obj).__name__
        )
        raise ValueError(
            f"{path} holds no UNet state dict: expected a dict of tensors, or one under "
            f"{' / '.join(repr(k) for k in _NESTED_KEYS)}; found {found}"
        )
    if all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    not_float = [key for key, value in state_dict.items() if not value.is_floating_point()]
    if not_float:
        raise ValueError(
            f"{path}: " + listing("non-floating-point tensors in the UNet state dict", not_float)
        )
    return {key: value.float() for key, value in state_dict.items()}


def _describe(shapes: Mapping[str, Sequence[int]]) -> str:
    """A short structural summary of an OpenAI UNet state dict, for error messages."""
    facts = []
    stem = shapes.get("input_blocks.0.0.weight")
    if stem is not None and len(stem) == 4:
        facts.append(f"model_channels {stem[0]}")
    count = sum(int(torch.Size(shape).numel()) for shape in shapes.values())
    facts.append(f"{count:,} parameters in {len(shapes)} tensors")
    if any(re.fullmatch(r"input_blocks\.\d+\.0\.op\.weight", key) for key in shapes):
        facts.append("convolution downsampling")
    elif any(key.startswith("input_blocks.") for key in shapes):
        facts.append("ResBlock downsampling (guided-diffusion resblock_updown)")
    return ", ".join(facts)


def convert_openai_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    kind: str,
    openai_config: Mapping[str, Any] | None = None,
    source: str = "the state dict",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Convert an OpenAI state dict for ``kind`` (or for an explicit ``openai_config``).

    Returns the diffusers state dict and the ``UNet2DModel`` config. If the tensors do not fit, the
    :class:`CheckpointMismatchError` names ``source``, says which other kind they fit if any (e.g. "looks like
    an improved-cifar10 checkpoint"), and lists the mismatches.
    """
    spec = kind_spec(kind)
    config = dict(spec.openai_config if openai_config is None else openai_config)
    unet_config = diffusers_config_from_openai(config, kind=kind)
    new_order = bool(config.get("use_new_attention_order", False))
    try:
        return openai_to_diffusers(state_dict, unet_config, new_attention_order=new_order), unet_config
    except CheckpointMismatchError as err:
        shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
        target = f"--kind {kind}" if openai_config is None else f"the given OpenAI config (kind {kind})"
        others = [
            other for other in KINDS.values() if other.name != kind and not mismatches(shapes, other.unet)
        ]
        if others:
            other = others[0]
            article = "an" if other.name[0] in "aeiou" else "a"
            raise CheckpointMismatchError(
                f"{source} looks like {article} {other.name} checkpoint ({other.description}; "
                f"{other.checkpoint}), not {target}. Convert it with --kind {other.name}."
            ) from None
        expectation = ""
        if openai_config is None:
            expectation = f"; {kind} expects {_describe(_openai_shapes(unet_config))}"
        raise CheckpointMismatchError(
            f"{source} does not fit {target}: it has {_describe(shapes)}{expectation}. {err}"
        ) from None


def _openai_shapes(unet_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The OpenAI key → shape layout that converts into ``UNet2DModel(**unet_config)``."""
    expected = diffusers_shapes(unet_config)
    return {o: openai_shape(rule, expected[ds[0]]) for o, ds, rule in key_plan(unet_config, expected)}


def openai_setup_from_flags(
    state_dict: Mapping[str, torch.Tensor],
    model_flags: str | Sequence[str],
    library: str | None = None,
    source: str = "the checkpoint",
) -> OpenAISetup:
    """The ``UNetModel`` config and diffusion settings of an OpenAI checkpoint, read off its tensors
    (:func:`~.infer.infer_layout`) and completed by its training script's flags (:func:`~.flags.parse_model_flags`,
    :func:`~.infer.resolve_setup`). Raises ``ValueError`` for bad flags, for flags that contradict the tensors
    (naming both values), and for a layout ``UNet2DModel`` cannot express."""
    flags = (
        parse_model_flags(model_flags, library) if not isinstance(model_flags, ModelFlags) else model_flags
    )
    setup = resolve_setup(flags, infer_layout(_shapes(state_dict), source), source)
    diffusers_config_from_openai(
        setup.openai_config
    )  # refuse what UNet2DModel cannot express, in one sentence
    return setup


def convert_openai_checkpoint(
    src: str | Path,
    dst: str | Path,
    kind: str | None = None,
    pad_to: int | None = KIND_DEFAULT,
    *,
    model_flags: str | Sequence[str] | None = None,
    library: str | None = None,
    openai_config: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    verbose: bool = False,
) -> Path:
    """Convert an OpenAI improved/guided-diffusion checkpoint into a :class:`DiffusionDenoiser` folder.

    Give either ``kind`` (one of the two released networks) or ``model_flags`` (any other UNet of the two
    libraries: the architecture is read off the tensors, the rest taken from the flags).

    Args:
        src: the ``.pt`` file (e.g. ``cifar10_uncond_50M_500K.pt`` or ``256x256_diffusion_uncond.pt``).
        dst: output folder; ``DiffusionDenoiser.from_pretrained(dst)`` then loads the converted model with its
            noise schedule, ``rescale_timesteps`` and ``pad_to``.
        kind: a key of :data:`KINDS`: ``"improved-cifar10"`` or ``"guided-256"``.
        pad_to: ``pad_to`` to record in the folder; default: the kind's (``None`` for CIFAR-10, 256 for
            guided-256, so 224 px inputs are reflection-padded to 256 and cropped back), ``None`` with
            ``model_flags``. ``None`` records no padding.
        model_flags: the training script's model and diffusion flags, e.g. ``"--image_size 64 --num_channels
            128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 --noise_schedule cosine"``
            (see :func:`~.flags.parse_model_flags`); they set the attention heads, the noise schedule,
            ``predict_xstart`` and ``rescale_timesteps`` and must agree with the tensors where both say something.
        library: ``"improved-diffusion"`` or ``"guided-diffusion"``, if the flags do not tell (needed only for
            the default of ``rescale_timesteps``, which differs).
        openai_config: with ``kind``: the OpenAI ``UNetModel`` keyword arguments of the checkpoint, if it is not
            the kind's released network; the kind then only supplies the noise schedule, ``rescale_timesteps``
            and the default ``pad_to``.
        overwrite: write into ``dst`` even if it is a non-empty folder.
        verbose: print progress to stderr.

    Returns:
        ``dst`` as a ``Path``.

    Raises:
        FileNotFoundError / OSError: ``src`` missing or unreadable, ``dst`` not writable or already used.
        ValueError: unknown kind, invalid ``pad_to`` or flags, no state dict in ``src``, a layout
            ``UNet2DModel`` cannot express, or keys/shapes that do not fit (:class:`CheckpointMismatchError`,
            which says which kind the file looks like when it can tell).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    from msds_lightning.models.denoiser import DiffusionDenoiser

    if (kind is None) == (model_flags is None):
        raise ValueError("give either kind (a released network) or model_flags (the training script's flags)")
    if library is not None and model_flags is None:
        raise ValueError("library goes with model_flags; a kind knows its library")
    if model_flags is not None and openai_config is not None:
        raise ValueError(
            "openai_config goes with kind; with model_flags the config is read off the checkpoint"
        )
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    flags = None
    if kind is not None:
        spec = kind_spec(kind)
        if pad_to is KIND_DEFAULT:
            pad_to = spec.pad_to
        # Check the cheap things before reading a (possibly 2 GB) checkpoint.
        unet_config = diffusers_config_from_openai(
            spec.openai_config if openai_config is None else openai_config, kind
        )
        _check_pad_to(pad_to, unet_config)
    else:
        flags = parse_model_flags(model_flags, library)
        if pad_to is KIND_DEFAULT:
            pad_to = None
        if pad_to is not None and pad_to <= 0:
            raise ValueError(
                f"pad_to must be a positive multiple of the UNet's downsampling factor, got {pad_to}"
            )
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"Output {dst} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"Output folder {dst} is not empty; choose another folder or pass overwrite")

    def log(message: str) -> None:
        if verbose:
            print(message, file=sys.stderr, flush=True)

    log(f"reading {src}")
    state_dict = load_openai_state_dict(src)
    if kind is not None:
        log(f"converting {len(state_dict)} tensors ({kind})")
        converted, unet_config = convert_openai_state_dict(state_dict, kind, openai_config, source=str(src))
        scheduler_config, rescale_timesteps = dict(spec.scheduler), spec.rescale_timesteps
        record: dict[str, Any] = {"kind": kind, "openai_config": dict(openai_config or spec.openai_config)}
    else:
        setup = openai_setup_from_flags(state_dict, flags, source=str(src))
        log(f"converting {len(state_dict)} tensors ({setup.library}, model_channels "
            f"{setup.layout.model_channels}, channel_mult {tuple(setup.layout.channel_mult)})")  # fmt: skip
        unet_config = diffusers_config_from_openai(setup.openai_config)
        _check_pad_to(pad_to, unet_config)
        new_order = bool(setup.openai_config.get("use_new_attention_order", False))
        try:
            converted = openai_to_diffusers(state_dict, unet_config, new_attention_order=new_order)
        except CheckpointMismatchError as err:
            described = _describe(_shapes(state_dict))
            raise CheckpointMismatchError(
                f"{src} does not fit the UNet read off its tensors and model flags ({described}): {err}"
            ) from None
        scheduler_config, rescale_timesteps = setup.scheduler, setup.rescale_timesteps
        record = {"library": setup.library, "model_flags": flags.text, "openai_config": setup.openai_config}
    with torch.device("meta"):
        unet = UNet2DModel(**unet_config)
    unet = unet.to_empty(device="cpu")
    unet.load_state_dict(converted, strict=True)
    del state_dict, converted
    unet.eval()
    scheduler = DDPMScheduler(**scheduler_config)
    denoiser = DiffusionDenoiser(unet, scheduler, rescale_timesteps=rescale_timesteps, pad_to=pad_to)
    log(f"writing {dst}")
    denoiser.save_pretrained(dst)
    # Where the folder came from, for the record (DiffusionDenoiser does not read it).
    record = {
        "source": src.name,
        **record,
        "scheduler": scheduler_config,
        "rescale_timesteps": rescale_timesteps,
    }
    (dst / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return dst


def _shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state_dict.items()}


def _check_pad_to(pad_to: int | None, unet_config: Mapping[str, Any]) -> None:
    factor = 2 ** (len(unet_config["block_out_channels"]) - 1)
    if pad_to is not None and (pad_to <= 0 or pad_to % factor):
        raise ValueError(
            f"pad_to must be a positive multiple of the UNet's downsampling factor {factor}, got {pad_to}"
        )
