"""Hugging Face Hub ids wherever a model path is taken, and model cards / uploads for our denoisers.

A name is looked up locally first: an existing file or folder always wins and behaves as before. Otherwise,
if it is a valid Hub repo id (``"org/name"`` or ``"name"``), the files are resolved by ``huggingface_hub``:
from its cache (``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``) when they are there, else
downloaded into it. ``HF_HUB_OFFLINE=1`` never touches the network and only reads the cache. Private or
gated repos use the token ``huggingface_hub`` finds itself (``HF_TOKEN``, or ``hf auth login``): no token is
ever taken as an argument, written to a config or logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id


@dataclass(frozen=True)
class Resolved:
    """A local folder and, when it came from the Hub, the repo id and requested revision it came from."""

    folder: Path
    repo_id: str | None = None
    revision: str | None = None

    @property
    def source(self) -> str:
        """``repo_id`` (``@revision`` when one was asked for) for a Hub folder, else the local path."""
        if self.repo_id is None:
            return str(self.folder)
        return self.repo_id if self.revision is None else f"{self.repo_id}@{self.revision}"


def is_repo_id(name: str) -> bool:
    """Whether ``name`` is a syntactically valid Hub model repo id (``"org/name"`` or ``"name"``).

    Strings that are spelled as paths (``./x``, ``~/x``, ``/x``, ``a/b/c``, backslashes) are not."""
    if not name or name.startswith((".", "~", "/")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve_folder(
    name: str | os.PathLike,
    *,
    what: str,
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    expected: str = "",
) -> Resolved:
    """The local folder (or file) behind ``name``: the path itself if it exists, else a Hub snapshot.

    Args:
        name: a local path, or a Hub repo id such as ``"google/ddpm-cifar10-32"``.
        what: what is being loaded, for messages (``"Denoiser folder"``).
        revision: Hub branch, tag or commit hash (``None``: ``main``); an error for a local path.
        allow_patterns: only these files of the repo (``snapshot_download``'s glob patterns).
        expected: a sentence on what the path should hold, appended to the not-found message.

    Raises ``FileNotFoundError`` naming ``name`` when it is neither an existing path nor a Hub repo that
    can be resolved (not a valid repo id; missing from the cache while offline; no such repo or revision).
    """
    text = os.fspath(name)
    local = Path(text).expanduser()
    if local.exists():
        if revision is not None:
            raise ValueError(
                f"{what}: revision={revision!r} is for Hub repo ids, but {text!r} is a local path"
            )
        return Resolved(local)
    if not is_repo_id(text):
        raise FileNotFoundError(
            f"{what} not found: {local} (neither an existing local path nor a Hugging Face Hub repo id such "
            f"as 'org/name'). {expected}".rstrip()
        )
    at = "" if revision is None else f" at revision {revision!r}"
    prefix = f"{what} {text!r} is not a local path, and as a Hugging Face Hub repo{at} it"
    try:
        folder = snapshot_download(text, revision=revision, allow_patterns=allow_patterns)
    except LocalEntryNotFoundError as err:
        mode = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        raise FileNotFoundError(
            f"{prefix} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {mode}. Download it "
            f"once with network access (unset HF_HUB_OFFLINE), or point HF_HUB_CACHE at a cache holding it."
        ) from err
    except GatedRepoError as err:
        raise FileNotFoundError(
            f"{prefix} is gated: accept its terms on huggingface.co and set HF_TOKEN (or run `hf auth login`)."
        ) from err
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(
            f"{prefix} does not exist (or is private: set HF_TOKEN, or run `hf auth login`)."
        ) from err
    except RevisionNotFoundError as err:
        raise FileNotFoundError(f"{prefix} has no revision {revision!r}.") from err
    except HfHubHTTPError as err:
        raise OSError(f"{prefix} could not be downloaded: {err}") from err
    return Resolved(Path(folder), text, revision)


# ----------------------------------------------------------------------------------------------------
# Model cards and uploads
# ----------------------------------------------------------------------------------------------------


def denoiser_card(
    *,
    unet_config: dict[str, Any],
    scheduler_config: dict[str, Any],
    options: dict[str, Any],
    provenance: dict[str, Any],
    certification: str | os.PathLike | None = None,
) -> str:
    """The README.md (Hub model card, YAML metadata + markdown) of a saved :class:`DiffusionDenoiser` folder.

    ``provenance`` holds what the folder cannot tell by itself: ``base_model`` (the path or Hub id the
    weights started from) and ``training`` (``{"method": ..., "sigmas": [...], "objective": ..., "weights":
    {...}, ...}``). ``certification`` is a certification TSV of ``msds certify`` (Cohen et al.'s columns);
    its certified-accuracy table (``msds analyze``'s markdown) goes into the card.
    """
    from huggingface_hub import ModelCard, ModelCardData

    base_model = provenance.get("base_model")
    training = provenance.get("training") or {}
    metadata = ModelCardData(
        library_name="diffusers",
        tags=["msds-lightning", "denoised-smoothing", "randomized-smoothing", "certified-robustness"],
        base_model=base_model
        if isinstance(base_model, str) and is_repo_id(base_model.split("@")[0])
        else None,
    )
    schedule = scheduler_config.get("beta_schedule", "custom")
    lines = [
        "# Diffusion denoiser for (multi-scale) denoised smoothing",
        "",
        "A one-shot diffusion denoiser saved by msds-lightning (`DiffusionDenoiser.save_pretrained`): `unet/` (diffusers `UNet2DModel`, safetensors), `scheduler/` "
        "(the noise schedule the UNet was trained with) and `denoiser_config.json`.",
        "",
        "```python",
        "from msds_lightning.models import DiffusionDenoiser",
        'denoiser = DiffusionDenoiser.from_pretrained("<this folder or Hub repo id>")',
        "x0 = denoiser(x + sigma * torch.randn_like(x), sigma)  # pixels and sigma in [0, 1] units",
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {base_model or 'not recorded'} |",
        f"| UNet | {unet_config.get('sample_size')} px, {unet_config.get('in_channels')} channels, "
        f"block widths {list(unet_config.get('block_out_channels', []))} |",
        f"| noise schedule | {schedule}, T = {scheduler_config.get('num_train_timesteps')}, "
        f"prediction {scheduler_config.get('prediction_type', 'epsilon')} |",
        f"| rescale_timesteps | {options.get('rescale_timesteps')} |",
        f"| pad_to | {options.get('pad_to')} |",
    ]
    if training:
        sigmas = training.get("sigmas")
        lines.append(f"| training | {training.get('method', 'fine-tuned')} |")
        if sigmas is not None:
            lines.append(f"| σ set ([0, 1] pixel units) | {', '.join(f'{s:g}' for s in sigmas)} |")
        if training.get("objective"):
            lines.append(f"| objective | {training['objective']} |")
        for key, value in (training.get("weights") or {}).items():
            lines.append(f"| {key} | {value} |")
        for key, value in (training.get("settings") or {}).items():
            lines.append(f"| {key} | {value} |")
    if certification is not None:
        from .results.analysis import format_markdown, summarize_files

        path = Path(certification)
        lines += [
            "",
            "## Certification",
            "",
            f"Certified accuracy at each l2 radius ([0, 1] pixel units) from `{path.name}` (`msds analyze`):",
            "",
            format_markdown(summarize_files([path])).rstrip(),
        ]
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload denoiser with msds-lightning",
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` to it (``huggingface_hub.upload_folder``).

    The token is the one ``huggingface_hub`` finds (``HF_TOKEN`` or ``hf auth login``). Returns the commit URL.
    """
    from huggingface_hub import HfApi

    if not is_repo_id(repo_id):
        raise ValueError(f"repo_id must be a Hub repo id such as 'your-name/denoiser-msds', got {repo_id!r}")
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=os.fspath(folder), revision=revision, commit_message=commit_message
    )
    return str(getattr(info, "commit_url", info))
