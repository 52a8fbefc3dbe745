"""ImageNet-1k class order and the 200-class subsets of ImageNet-R and ImageNet-A, from timm's class files.

An ImageNet-1k classifier's output k is the k-th WordNet id of the 1,000 sorted ids (``n01440764`` = 0,
``n01443537`` = 1, ...): the order of torchvision's ``ImageFolder`` over the ILSVRC-2012 class folders and of
timm's ``ImageNetInfo("imagenet-1k")``. ImageNet-R and ImageNet-A each hold 200 of these classes; their
WordNet ids ship with timm (``timm/data/_info/imagenet_{r,a}_synsets.txt``, the lists of Hendrycks et al.).
"""

from __future__ import annotations

import pkgutil
from functools import cache, lru_cache

IMAGENET_SUBSETS = ("imagenet-r", "imagenet-a")


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet ids in classifier output order (timm's ``ImageNetInfo``)."""
    from timm.data import ImageNetInfo

    wnids = tuple(ImageNetInfo("imagenet-1k").label_names())
    if len(wnids) != 1000 or list(wnids) != sorted(wnids):
        raise RuntimeError(
            f"timm's ImageNet-1k class list has {len(wnids)} ids or is not sorted; reinstall timm"
        )
    return wnids


@cache
def subset_wnids(subset: str) -> tuple[str, ...]:
    """The 200 WordNet ids of ``"imagenet-r"`` or ``"imagenet-a"``, sorted (timm's synset files)."""
    if subset not in IMAGENET_SUBSETS:
        raise ValueError(f"subset must be one of {IMAGENET_SUBSETS}, got {subset!r}")
    name = f"_info/{subset.replace('-', '_')}_synsets.txt"
    data = pkgutil.get_data("timm.data", name)
    if data is None:
        raise RuntimeError(f"timm does not ship {name}; install timm >= 0.9")
    wnids = tuple(sorted(line.strip() for line in data.decode().splitlines() if line.strip()))
    if len(wnids) != 200 or not set(wnids) <= set(imagenet_wnids()):
        raise RuntimeError(f"timm's {name} is not 200 ImageNet-1k WordNet ids; reinstall timm")
    return wnids


def imagenet_indices(wnids) -> list[int]:
    """ImageNet-1k output indices of ``wnids`` (a ``ValueError`` names any id that is not an ImageNet-1k class)."""
    position = {w: k for k, w in enumerate(imagenet_wnids())}
    unknown = [w for w in wnids if w not in position]
    if unknown:
        raise ValueError(f"{len(unknown)} WordNet id(s) are not ImageNet-1k classes, e.g. {unknown[:5]}")
    return [position[w] for w in wnids]
