"""Fine-tuning throughput: MSDS fine-tuning steps vs plain DDPM training steps on the same UNet.

    .venv/bin/python bench/finetune_throughput.py [--unet tiny|cifar10] [--batch 8] [--copies 4] [--steps 5]

Both run forward + backward + AdamW step in the same process on the same device. MSDS costs M UNet
calls per image plus the frozen classifier's forward and backward (to the UNet's output); DDPM training
costs one UNet call per image. Prints images/s for each and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from msds_lightning.convert import KINDS
from msds_lightning.models import Classifier, DiffusionDenoiser
from msds_lightning.modules import DenoiserFinetuneModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.tiny_models
from tests.tiny_models import COSINE_SCHEDULE, tiny_classifier, tiny_unet_config  # noqa: E402


def timed(step, steps: int, device) -> float:
    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unet", choices=["tiny", "cifar10"], default="tiny")
    p.add_argument("--classifier", default="test_vit", help="timm name (random weights)")
    p.add_argument("--batch", type=int, default=8, help="images per step")
    p.add_argument("--copies", type=int, default=4, help="M noisy copies per image (MSDS)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    # "cifar10": the released improved-diffusion architecture (52.5M, learned variance), as the converter builds it
    unet_config = tiny_unet_config() if args.unet == "tiny" else KINDS["improved-cifar10"].unet
    denoiser = DiffusionDenoiser.from_config(unet_config, COSINE_SCHEDULE, rescale_timesteps=True).to(device)
    if args.classifier == "test_vit":
        classifier = tiny_classifier(seed=1)
    else:
        classifier = Classifier(args.classifier, 10, input_size=224, mean=[0.5] * 3, std=[0.5] * 3)
    module = (
        DenoiserFinetuneModule(denoiser, classifier, 10, num_noise_samples=args.copies).to(device).train()
    )
    optimizer = torch.optim.AdamW([q for q in denoiser.parameters() if q.requires_grad], lr=1e-5)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def msds_step():
        module.objective(x, y)["loss"].mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def ddpm_step():
        denoiser.diffusion_loss(x).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    ddpm = timed(ddpm_step, args.steps, device)
    msds = timed(msds_step, args.steps, device)
    params = sum(q.numel() for q in denoiser.unet.parameters()) / 1e6
    print(f"device {device}, UNet {args.unet} ({params:.1f}M params), classifier {args.classifier}, "
          f"batch {args.batch} images, M = {args.copies}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"DDPM training step : {args.batch / ddpm:8.2f} images/s  ({ddpm * 1000:.0f} ms/step)")
    print(f"MSDS fine-tune step: {args.batch / msds:8.2f} images/s  ({msds * 1000:.0f} ms/step)")
    print(f"ratio MSDS / DDPM  : {ddpm / msds:.3f} (throughput; 1/M = {1 / args.copies:.3f} if UNet-bound)")


if __name__ == "__main__":
    main()
