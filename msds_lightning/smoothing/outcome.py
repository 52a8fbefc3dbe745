"""One vocabulary for what the decision rules conclude: Cohen's rule, adaptive sampling and the cascade.

Two different things, kept apart on purpose:

* ``ABSTAIN = -1`` is the *prediction* written for an abstention (Cohen's convention: locuslab/smoothing's
  ``Smooth.ABSTAIN``, the ``predict`` column of the TSVs). It lives where class labels live.
* :class:`Outcome` says what a rule concluded for one image at one checkpoint (and, in a cascade, at one
  level): draw more, answer, abstain, or go to the next lower σ. It never appears in a prediction.
"""

from __future__ import annotations

import enum

ABSTAIN = -1
"""The prediction of an abstention (a class label slot, never a class)."""


class Outcome(enum.IntEnum):
    """A decision for one image. Integer-valued so that arrays of decisions are plain numpy int arrays."""

    CONTINUE = 0
    """Undecided: draw estimation samples up to the next checkpoint (adaptive sampling)."""
    CERTIFY = 1
    """Answer the selected class with a certified radius."""
    ABSTAIN = 2
    """Stop without an answer (the prediction is ``ABSTAIN``)."""
    LOWER = 3
    """Cascade only: this level is proven below p0 and cannot answer; go to the next lower σ."""
