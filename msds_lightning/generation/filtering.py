"""Pseudo-label filtering of generated images (Wang, Pang et al. 2023): keep per class the ``k`` images a
classifier is most confident belong to their conditioning class."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.generated_files import check_generated_arrays
from ..devices import resolve_device


def _as_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


@torch.inference_mode()
def conditioning_probabilities(
    images: np.ndarray,
    labels: np.ndarray,
    classifier: nn.Module,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """``softmax(classifier(x))[label]`` for every image (uint8 NHWC → [0, 1] NCHW), float32 [N]."""
    check_generated_arrays(images, labels, "images/labels")
    device = resolve_device(device)
    was_training = classifier.training
    classifier.eval().to(device)
    scores = np.empty(len(labels), dtype=np.float32)
    try:
        for start in range(0, len(labels), batch_size):
            stop = min(start + batch_size, len(labels))
            logits = classifier(_as_float(images[start:stop]).to(device)).float()
            y = torch.from_numpy(np.asarray(labels[start:stop])).to(device)
            if logits.ndim != 2 or int(y.max()) >= logits.shape[1]:
                raise ValueError(
                    f"classifier: expected [B, num_classes > {int(y.max())}] logits, got {tuple(logits.shape)}"
                )
            probs = logits.softmax(dim=1).gather(1, y[:, None])[:, 0]
            scores[start:stop] = probs.cpu().numpy()
    finally:
        classifier.train(was_training)
    return scores


def filter_top_k(
    images: np.ndarray,
    labels: np.ndarray,
    classifier: nn.Module,
    keep_per_class: int,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep, per class, the ``keep_per_class`` images with the highest conditioning-class probability.

    The reference's pseudo-label filtering (e.g. CIFAR-10: 500K generated per class, the top 100K kept by a
    WRN-28-10's softmax probability of the class each image was *generated for*). ``classifier`` maps
    [0, 1] pixels [B, C, H, W] to logits (e.g. :class:`~msds_lightning.models.Classifier`). The stored label
    stays the conditioning class. Output: classes in ascending order, each class's kept images in their
    original order (ties in probability keep the earlier image). Every class present must have at least
    ``keep_per_class`` images.
    """
    if isinstance(keep_per_class, bool) or int(keep_per_class) != keep_per_class or keep_per_class < 1:
        raise ValueError(f"keep_per_class must be an integer >= 1, got {keep_per_class!r}")
    scores = conditioning_probabilities(images, labels, classifier, batch_size=batch_size, device=device)
    return select_top_k(labels, scores, keep_per_class, images)


def select_top_k(
    labels: np.ndarray, scores: np.ndarray, keep_per_class: int, images: np.ndarray | None = None
):
    """Indices (or, with ``images``, the ``(images, labels)``) of the top ``keep_per_class`` scores per class."""
    labels = np.asarray(labels)
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < keep_per_class:
            raise ValueError(
                f"class {int(c)} has {len(members)} images, fewer than keep_per_class = {keep_per_class}"
            )
        best = members[np.argsort(-scores[members], kind="stable")[:keep_per_class]]
        keep.append(np.sort(best))
    index = np.concatenate(keep) if keep else np.empty(0, dtype=np.int64)
    if images is None:
        return index
    return np.asarray(images)[index], labels[index]
