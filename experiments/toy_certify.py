"""Certify a toy linear classifier with ``Smooth`` and write a result TSV (README quick start).

    python experiments/toy_certify.py outputs/toy_sigma0.25.tsv --sigma 0.25

The classifier is a fixed set of 10 random unit-norm templates on 3×8×8 images (logit_k = <x, t_k>);
the images lean towards one template each with a strength drawn at random, so some certify large radii
and some abstain. Runs in seconds on a CPU.
"""

import argparse
import time

import torch

from msds_lightning.results import ResultWriter
from msds_lightning.smoothing import Smooth


class Templates(torch.nn.Module):
    def __init__(self, num_classes=10, shape=(3, 8, 8)):
        super().__init__()
        t = torch.randn(num_classes, *shape, generator=torch.Generator().manual_seed(0))
        self.register_buffer("templates", t / t.flatten(1).norm(dim=1).view(-1, 1, 1, 1))

    def forward(self, x):
        return torch.einsum("bchw,kchw->bk", x, self.templates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outfile")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise std in [0,1] pixel units")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--N0", type=int, default=100)
    parser.add_argument("--N", type=int, default=10000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    model = Templates()
    smooth = Smooth(model, num_classes=10, sigma=args.sigma)
    g = torch.Generator().manual_seed(1)
    with ResultWriter(args.outfile, extra_columns=("sigma",)) as writer:
        for idx in range(args.images):
            label = idx % 10
            x = (0.5 + 4 * torch.rand(1, generator=g) * model.templates[label]).clamp(0, 1)
            torch.manual_seed(idx)  # per-image seed: reproducible and resumable
            start = time.time()
            prediction, radius = smooth.certify(x, args.N0, args.N, args.alpha, args.batch)
            writer.write(idx, label, prediction, radius, time.time() - start, sigma=args.sigma)
    print(f"wrote {args.images} rows to {args.outfile}")


if __name__ == "__main__":
    main()
