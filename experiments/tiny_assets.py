"""Write tiny random-weight models and a fake CIFAR-10 root for a smoke test of the whole pipeline.

    python experiments/tiny_assets.py outputs/tiny
    msds certify -c configs/tiny/certify_dds.yaml

Writes ``<out>/denoiser`` (a diffusers folder: ~40k-parameter UNet2DModel + cosine DDPMScheduler, 4000
steps), ``<out>/classifier.safetensors`` (timm ``test_vit`` weights, 10 classes, 32 px) and
``<out>/cifar10`` (random images in torchvision's CIFAR-10 layout). The numbers it certifies mean nothing;
it shows every stage — config, data, denoise, classify, certify, TSV, table — works on this machine.
"""

import argparse
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.tiny_models
from tests.tiny_models import tiny_classifier, tiny_denoiser, write_fake_cifar10  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="outputs/tiny")
    args = parser.parse_args()
    out = Path(args.out)
    write_fake_cifar10(out / "cifar10", n_train=50, n_test=20)
    tiny_denoiser(schedule="cosine", num_train_timesteps=4000, rescale_timesteps=True).save_pretrained(
        out / "denoiser"
    )
    save_file(tiny_classifier(seed=1).model.state_dict(), out / "classifier.safetensors")
    print(f"tiny denoiser, classifier and fake CIFAR-10 written to {out}/")


if __name__ == "__main__":
    main()
