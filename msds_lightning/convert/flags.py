"""The command-line flags of OpenAI's improved-diffusion and guided-diffusion scripts (``image_train.py``,
``image_sample.py``: the ``MODEL_FLAGS`` / ``DIFFUSION_FLAGS`` of their READMEs), parsed as the libraries'
``script_util.add_dict_to_argparser(model_and_diffusion_defaults())`` parses them, and the diffusion
settings they determine (noise schedule, prediction type, timestep rescaling)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

IMPROVED = "improved-diffusion"
GUIDED = "guided-diffusion"
LIBRARIES = (IMPROVED, GUIDED)

# script_util.model_and_diffusion_defaults() of each library at the commits of ../shared/fixtures/openai_unet
# (improved-diffusion 1bc7bbb, guided-diffusion 22e0df8); the default's type is the flag's type.
DEFAULTS: dict[str, dict[str, Any]] = {
    IMPROVED: {
        "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
        "attention_resolutions": "16,8", "dropout": 0.0, "learn_sigma": False, "sigma_small": False,
        "class_cond": False, "diffusion_steps": 1000, "noise_schedule": "linear", "timestep_respacing": "",
        "use_kl": False, "predict_xstart": False, "rescale_timesteps": True, "rescale_learned_sigmas": True,
        "use_checkpoint": False, "use_scale_shift_norm": True,
    },
    GUIDED: {
        "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
        "num_head_channels": -1, "attention_resolutions": "16,8", "channel_mult": "", "dropout": 0.0,
        "class_cond": False, "use_checkpoint": False, "use_scale_shift_norm": True, "resblock_updown": False,
        "use_fp16": False, "use_new_attention_order": False, "learn_sigma": False, "diffusion_steps": 1000,
        "noise_schedule": "linear", "timestep_respacing": "", "use_kl": False, "predict_xstart": False,
        "rescale_timesteps": False, "rescale_learned_sigmas": False,
    },
}  # fmt: skip
ONLY_IN = {
    library: frozenset(DEFAULTS[library]) - frozenset(DEFAULTS[other])
    for library, other in ((IMPROVED, GUIDED), (GUIDED, IMPROVED))
}
# create_model's channel_mult for an image size when --channel_mult is not given (guided-diffusion only
# has that flag; improved-diffusion knows 256, 64 and 32, guided-diffusion 512, 256, 128 and 64).
CHANNEL_MULT_FOR_SIZE: dict[str, dict[int, tuple[float, ...]]] = {
    IMPROVED: {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)},
    GUIDED: {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)},
}
# Flags that change neither the network nor what the converted denoiser computes: training losses, the
# sampler's step subset and run-time options.
NO_EFFECT = ("timestep_respacing", "use_kl", "rescale_learned_sigmas", "use_checkpoint", "use_fp16")
_TRUE, _FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")


@dataclass(frozen=True)
class ModelFlags:
    """Parsed script flags.

    Attributes:
        given: the flags on the command line, with their typed values (the last one wins for a repeated flag).
        library: the library they belong to (``"improved-diffusion"`` / ``"guided-diffusion"``), or ``None``
            when they would be valid for either.
        text: the flags as given, for messages.
    """

    given: Mapping[str, Any]
    library: str | None
    text: str

    def value(self, name: str, library: str | None = None) -> Any:
        """The flag's value: the given one, else ``library``'s (or this one's) default."""
        if name in self.given:
            return self.given[name]
        library = library or self.library
        defaults = DEFAULTS[library] if library is not None else DEFAULTS[GUIDED] | DEFAULTS[IMPROVED]
        return defaults.get(name)

    def describe(self, name: str) -> str:
        """``"--name VALUE"`` as given, or ``"the default --name VALUE"``."""
        shown = self.value(name)
        shown = ",".join(str(v) for v in shown) if isinstance(shown, tuple) else shown
        return f"--{name} {shown}" if name in self.given else f"the default --{name} {shown}"


def _convert(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):  # the libraries' str2bool
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError("boolean value expected (true/false, yes/no, 1/0)")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError as err:
        raise ValueError(f"--model-flags: --{name} {raw!r}: {err}") from None
    return raw


def parse_model_flags(flags: str | Sequence[str], library: str | None = None) -> ModelFlags:
    """Parse the flags of improved-/guided-diffusion's scripts, e.g. ``"--image_size 64 --num_channels 128
    --learn_sigma True --diffusion_steps 4000 --noise_schedule cosine"``.

    Accepts ``--name value`` and ``--name=value`` (quoted with shell rules when given as one string), the
    types of the library's ``model_and_diffusion_defaults`` (booleans as its ``str2bool``: true/false,
    yes/no, t/f, y/n, 1/0). ``library`` restricts the flags to that library's; without it, a flag only one
    library has (``--num_head_channels``, ``--channel_mult``, ``--resblock_updown``, ``--use_fp16``,
    ``--use_new_attention_order`` / ``--sigma_small``) says which.

    Raises ``ValueError`` naming the flag for an unknown flag (e.g. a training flag such as ``--lr``, a
    sampling flag such as ``--batch_size``), a missing or malformed value, or flags of both libraries.
    """
    if library is not None and library not in LIBRARIES:
        raise ValueError(f"unknown library {library!r}; expected one of {list(LIBRARIES)}")
    tokens = shlex.split(flags) if isinstance(flags, str) else list(flags)
    text = " ".join(tokens)
    known = DEFAULTS[library] if library is not None else DEFAULTS[GUIDED] | DEFAULTS[IMPROVED]
    given: dict[str, Any] = {}
    unknown: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"--model-flags: expected --name value pairs, got {token!r} in {text!r}")
        name, equals, raw = token[2:].partition("=")
        if not equals:
            if i + 1 >= len(tokens):
                raise ValueError(f"--model-flags: --{name} has no value")
            raw = tokens[i + 1]
            i += 1
        i += 1
        if name not in known:
            unknown.append(f"--{name}")
            continue
        given[name] = _convert(name, raw, known[name])
    if unknown:
        scope = f"{library}'s" if library is not None else "improved-diffusion's or guided-diffusion's"
        raise ValueError(
            f"--model-flags: {', '.join(unknown)} {'is not a flag' if len(unknown) == 1 else 'are not flags'} "
            f"of {scope} model_and_diffusion_defaults; pass only the MODEL_FLAGS and DIFFUSION_FLAGS of the "
            f"training or sampling command (not --lr, --batch_size, --model_path, ...)"
        )
    if library is None:
        hints = {lib: sorted(set(given) & ONLY_IN[lib]) for lib in LIBRARIES}
        if hints[IMPROVED] and hints[GUIDED]:
            raise ValueError(
                f"--model-flags mix improved-diffusion's {', '.join('--' + n for n in hints[IMPROVED])} with "
                f"guided-diffusion's {', '.join('--' + n for n in hints[GUIDED])}; no script takes both"
            )
        library = next((lib for lib in LIBRARIES if hints[lib]), None)
    return ModelFlags(given=given, library=library, text=text)


def attention_factors(flags: ModelFlags) -> set[int]:
    """``--attention_resolutions`` as the downsample factors create_model passes (``image_size // res``)."""
    image_size = int(flags.value("image_size"))
    text = str(flags.value("attention_resolutions"))
    try:
        return {image_size // int(res) for res in text.split(",")}
    except (ValueError, ZeroDivisionError):
        raise ValueError(
            f"--model-flags: --attention_resolutions {text!r} must be comma-separated image sizes such as 16,8"
        ) from None


def channel_mult_of(flags: ModelFlags) -> tuple[float, ...] | None:
    """The channel_mult the flags determine (``--channel_mult``, or the library's one for ``--image_size``),
    or ``None`` if they determine none (then the checkpoint's is used)."""
    text = str(flags.given.get("channel_mult", ""))
    if text:
        try:
            return tuple(int(m) for m in text.split(","))  # guided-diffusion reads them as int
        except ValueError:
            raise ValueError(
                f"--model-flags: --channel_mult {text!r} must be comma-separated integers"
            ) from None
    if "image_size" not in flags.given:
        return None
    size = int(flags.given["image_size"])
    tables = [CHANNEL_MULT_FOR_SIZE[flags.library]] if flags.library else list(CHANNEL_MULT_FOR_SIZE.values())
    found = {table[size] for table in tables if size in table}
    return found.pop() if len(found) == 1 else None


def scheduler_config(flags: ModelFlags) -> dict[str, Any]:
    """The diffusers ``DDPMScheduler`` config of the flags' diffusion: ``get_named_beta_schedule`` (linear:
    β from 1e-4 to 0.02, both scaled by 1000/T, as the libraries do; cosine: ``squaredcos_cap_v2``), the
    variance (learned range, or fixed large / small) and what the network predicts (ε or x₀)."""
    steps = int(flags.value("diffusion_steps"))
    if steps <= 0:
        raise ValueError(f"--model-flags: --diffusion_steps must be positive, got {steps}")
    schedule = flags.value("noise_schedule")
    config: dict[str, Any] = {"num_train_timesteps": steps}
    if schedule == "linear":
        scale = 1000 / steps  # exactly the libraries' expression, so the float64 betas agree bit for bit
        config |= {"beta_schedule": "linear", "beta_start": scale * 0.0001, "beta_end": scale * 0.02}
    elif schedule == "cosine":
        config["beta_schedule"] = "squaredcos_cap_v2"
    else:
        raise ValueError(f"--model-flags: --noise_schedule must be linear or cosine, got {schedule!r}")
    if flags.value("learn_sigma"):
        config["variance_type"] = "learned_range"
    else:
        config["variance_type"] = "fixed_small" if flags.value("sigma_small", IMPROVED) else "fixed_large"
    config["prediction_type"] = "sample" if flags.value("predict_xstart") else "epsilon"
    return config
