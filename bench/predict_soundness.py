"""Wrong-answer rates of cascade PREDICT on the constructed worst cases of tests/test_cascade_predict.py:
the sound rule (n0 selection draws, fresh estimation draws, alpha/(2L) per bound) vs the former rule (the
same n draws choose and bound the class, one-sided at alpha/(s+1)), over 2,000 independent noise streams.

    .venv/bin/python bench/predict_soundness.py [--n 500 2000]

Limit for a sound rule at alpha = 0.05: alpha + 3 sd = 0.0646.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/
from msds_lightning.smoothing import ABSTAIN, PREDICTION, Engine  # noqa: E402
from msds_lightning.smoothing.bounds import clopper_pearson_interval  # noqa: E402
from tests.test_cascade_predict import ALPHA, CASES, P0, SIGMAS, STREAMS, streams, wrong_rate  # noqa: E402


def former_rule(engine, images, n) -> np.ndarray:
    answers, active = np.full(STREAMS, ABSTAIN), np.arange(STREAMS)
    for stage, sigma in enumerate(SIGMAS):
        if not len(active):
            break
        counts = engine.counts(images[active], [int(i) for i in active], n, (PREDICTION,), sigma=sigma).numpy()
        top = counts.argmax(1)
        bounds = np.array([clopper_pearson_interval(int(c[t]), n, ALPHA / (stage + 1)) for c, t in zip(counts, top)])
        answers[active[bounds[:, 0] >= P0]] = top[bounds[:, 0] >= P0]
        active = active[bounds[:, 1] < P0]
    return answers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[500, 2000])
    args = p.parse_args()
    print("| n | case | sound rule | former rule |\n|---|---|---|---|")
    for n in args.n:
        for name, (probabilities, truth) in CASES.items():
            f, images, indices = streams(probabilities)
            engine = Engine(f, 3, SIGMAS, P0, batch_size=100_000)
            sound = wrong_rate(engine.predict(images, indices, n, ALPHA, 100), truth)
            former = wrong_rate(former_rule(engine, images, n), truth)
            print(f"| {n} | {name} | {sound:.4f} | {former:.4f} |", flush=True)


if __name__ == "__main__":
    main()
