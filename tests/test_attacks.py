"""PGD / AutoAttack / BatchNorm freezing (msds_lightning.robustness) and the ``msds attack`` command."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
from torch import nn

from msds_lightning.cli import main as msds
from msds_lightning.cli.attack import parse_eps
from msds_lightning.robustness import (
    autoattack,
    cw_loss,
    frozen_batchnorm,
    pgd,
    pgd_with_restarts,
    robust_accuracy,
)
from msds_lightning.robustness.evaluation import COLUMNS, columns, read_rows

SHAPE = (3, 8, 8)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip


def images_near_the_box(n: int = 16, seed: int = 0) -> torch.Tensor:
    """Pixels at and within 0.01 of 0 and 1, and some in between: the box [0, 1] binds for most of them."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 3, (n, *SHAPE), generator=g)
    jitter = 0.01 * torch.rand(n, *SHAPE, generator=g) * torch.randint(0, 2, (n, *SHAPE), generator=g)
    middle = torch.rand(n, *SHAPE, generator=g)
    return torch.where(kind == 0, jitter, torch.where(kind == 1, 1 - jitter, middle))


class BinaryLinear(nn.Module):
    """logits [-s, s] with s = w·x + b: the margin of class 1 is 2s, of class 0 it is -2s."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(torch.Size(SHAPE).numel(), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.linear(x.flatten(1))
        return torch.cat([-s, s], dim=1)


def kl_to_clean(model: nn.Module, x: torch.Tensor):
    """A TRADES-style callable loss: KL(p_clean || p_adv), batch-summed (y is ignored)."""
    with torch.no_grad():
        p_clean = model(x).softmax(dim=1)
    return lambda logits, y: nn.functional.kl_div(logits.log_softmax(dim=1), p_clean, reduction="sum")


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    # (torch.testing.assert_close imports torch.distributed.tensor: seconds on a small machine)
    a, b = a.detach(), b.detach()
    return a.shape == b.shape and float((a - b).abs().max()) <= tol * (1 + float(b.abs().max()))


def check_in_ball_and_box(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    delta = (x_adv - x).flatten(1)
    if norm == "linf":
        assert float(delta.abs().max()) <= eps + 1e-6
    else:
        assert float(delta.norm(dim=1).max()) <= eps * (1 + 1e-5)


# ------------------------------------------------------------------------------------------------------
# PGD
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("random_start", [True, "ball", False])
@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize(("norm", "eps"), [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_stays_in_ball_and_box(norm, eps, loss, random_start):
    model = small_cnn().eval()
    x = images_near_the_box()
    y = torch.arange(len(x)) % 10
    with torch.no_grad():  # callers may be in no_grad; pgd enables gradients itself
        # a large step size pushes every iterate against the ball's and the box's faces
        x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=5, step_size=3 * eps, loss=loss,
                    random_start=random_start, generator=torch.Generator().manual_seed(1))  # fmt: skip
    check_in_ball_and_box(x_adv, x, eps, norm)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) > 0.5 * eps  # it did move
    assert not model.training
    assert all(p.grad is None for p in model.parameters())  # gradients w.r.t. the input only


@pytest.mark.parametrize("loss", ["ce", "cw", "callable"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_reaches_the_analytic_worst_case_of_a_linear_model(norm, loss):
    """For s(x) = w·x + b the worst margin over the ε-ball is margin − ε‖w‖₁ (ℓ∞) or margin − ε‖w‖₂ (ℓ2),
    attained at x ∓ ε·sign(w) (ℓ∞) or x ∓ ε·w/‖w‖₂ (ℓ2) when the box [0, 1] does not bind (x near 0.5)."""
    model = BinaryLinear()
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.1 * (torch.rand(32, *SHAPE, generator=g) - 0.5)  # in [0.45, 0.55]
    w = model.linear.weight.detach().flatten()
    eps, dual_norm = (0.03, w.abs().sum()) if norm == "linf" else (0.2, w.norm())
    with torch.no_grad():
        s = model(x)[:, 1]
    y = (s > 0).long()
    margin = torch.where(y == 1, s, -s)  # half the logit margin z_y − z_other
    if loss == "callable":  # a logit-margin loss given as a function
        loss_fn = lambda logits, y: (logits[:, 1] - logits[:, 0]).mul(1 - 2 * y).sum()  # noqa: E731
    else:
        loss_fn = loss
    x_adv = pgd(
        model, x, y, eps=eps, norm=norm, steps=10, loss=loss_fn, generator=torch.Generator().manual_seed(1)
    )
    check_in_ball_and_box(x_adv, x, eps, norm)
    with torch.no_grad():
        s_adv = model(x_adv)[:, 1]
    margin_adv = torch.where(y == 1, s_adv, -s_adv)
    expected = margin - eps * dual_norm
    # ℓ∞ hits the corner exactly; ℓ2 keeps a trace of its 0.001·N(0, I) start (measured ~5e-4 relative)
    tolerance = (1e-5 if norm == "linf" else 3e-3) * float(eps * dual_norm)
    assert float((margin_adv - expected).abs().max()) <= tolerance


def test_pgd_uses_a_callable_loss():
    """TRADES passes KL(p_clean || p_adv): it is maximised (the KL grows), with y handed through unused."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(torch.Size(SHAPE).numel(), 10))
    nn.init.normal_(model[1].weight, std=0.3)  # confident enough for the KL to be far above rounding
    x, y = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(2)), torch.zeros(8, dtype=torch.long)
    kl = kl_to_clean(model, x)
    with torch.no_grad():
        start = kl(model(x), y)
        noise = kl(model((x + 0.03 * (2 * torch.rand_like(x) - 1)).clamp(0, 1)), y)
    x_adv = pgd(model, x, y, eps=0.03, steps=5, loss=kl, generator=torch.Generator().manual_seed(0))
    check_in_ball_and_box(x_adv, x, 0.03, "linf")
    with torch.no_grad():
        assert float(kl(model(x_adv), y)) > max(10 * float(noise), float(start))


def test_pgd_eps_zero_and_argument_checks():
    model, x, y = small_cnn().eval(), torch.rand(2, *SHAPE), torch.tensor([0, 1])
    assert torch.equal(pgd(model, x, y, eps=0.0), x)
    for bad in (dict(norm="l1"), dict(eps=-0.1), dict(eps=float("nan")), dict(steps=0), dict(steps=2.5),
                dict(loss="mse"), dict(step_size=0.0), dict(random_start="gaussian")):  # fmt: skip
        with pytest.raises(ValueError):
            pgd(model, x, y, **{"eps": 0.1, **bad})
    with pytest.raises(ValueError):
        pgd_with_restarts(model, x, y, restarts=0, eps=0.1)


def test_cw_loss_is_the_margin():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    assert cw_loss(logits, torch.tensor([0, 2])).tolist() == [-1.0, 6.0]


def test_pgd_restarts_never_worse_than_one_run():
    model = small_cnn().eval()
    x = torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    one = pgd(model, x, y, eps=0.5, norm="l2", steps=2, generator=torch.Generator().manual_seed(0))
    three = pgd_with_restarts(model, x, y, restarts=3, eps=0.5, norm="l2", steps=2,
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
    check_in_ball_and_box(three, x, 0.5, "l2")
    with torch.no_grad():
        fooled_one, fooled_three = model(one).argmax(1) != y, model(three).argmax(1) != y
    assert bool((fooled_three | ~fooled_one).all())  # the first restart is the single run


# ------------------------------------------------------------------------------------------------------
# BatchNorm
# ------------------------------------------------------------------------------------------------------


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def test_frozen_batchnorm_keeps_running_stats_during_pgd_in_train_mode():
    model = small_cnn().train()
    x, y = torch.rand(16, *SHAPE), torch.arange(16) % 10
    model(x)  # running stats away from their initial values
    before = _bn_buffers(model)
    assert {k.rsplit(".", 1)[1] for k in before} == {"running_mean", "running_var", "num_batches_tracked"}
    reference = copy.deepcopy(model)  # train mode: batch statistics
    with frozen_batchnorm(model):
        assert close(model(x), reference(x))  # batch statistics are used inside
        x_adv = pgd(model, x, y, eps=8 / 255, steps=3)
        assert model.training
    after = _bn_buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    assert model.training and all(
        m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )
    check_in_ball_and_box(x_adv, x, 8 / 255, "linf")
    model(x_adv)  # sanity: outside the context a train-mode forward does update them
    assert not torch.equal(model[1].running_mean, before["1.running_mean"])
    assert int(model[1].num_batches_tracked) == int(before["1.num_batches_tracked"]) + 1


def test_frozen_batchnorm_restores_on_error_and_leaves_eval_mode_alone():
    model = small_cnn().eval()
    with pytest.raises(RuntimeError), frozen_batchnorm(model):
        assert not model[1].track_running_stats
        raise RuntimeError("boom")
    assert model[1].track_running_stats and not model.training
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        expected = model(x)
        with frozen_batchnorm(model):  # eval mode keeps using the running statistics
            assert close(model(x), expected)


# ------------------------------------------------------------------------------------------------------
# AutoAttack
# ------------------------------------------------------------------------------------------------------


def test_autoattack_is_exact_on_a_linear_model_and_never_beaten_by_pgd():
    """A 10-class linear model f(x) = Wx + b, x near 0.5 (the box does not bind): image i is robust at ε
    iff min_{j≠y} (z_y − z_j − ε‖w_y − w_j‖₁) > 0, so its exact robust accuracy is known. Any attack's
    accuracy is >= the exact one (its points lie in the ball); AutoAttack (APGD-T targets every other class,
    each a linear problem) attains it. Hence AA accuracy <= PGD accuracy here, also per image — which for
    a general network is no theorem, so the comparison is made where both are exactly defined."""
    torch.set_num_threads(1)  # tiny tensors: threads only cost synchronisation
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(torch.Size(SHAPE).numel(), 10)).train()
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.2 * (torch.rand(12, *SHAPE, generator=g) - 0.5)  # in [0.4, 0.6]
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = model[1].weight.detach()
    pair_norms = (w[y][:, None, :] - w[None, :, :]).abs().sum(-1)  # [B, K] ‖w_y − w_j‖₁
    critical = ((z.gather(1, y[:, None]) - z) / pair_norms).masked_fill(pair_norms == 0, float("inf"))
    critical = critical.amin(1)  # the radius at which each image stops being robust
    ordered = critical.sort().values
    k = int((ordered[4:-3] / ordered[3:-4]).argmax()) + 3  # the widest relative gap between middle images
    eps = float((ordered[k] + ordered[k + 1]) / 2)  # some images robust, some not, none near the decision
    assert eps < 0.39 and float((critical - eps).abs().min()) > 0.05 * eps
    exact_robust = critical > eps
    rng_state = torch.get_rng_state()

    x_aa = autoattack(model, x, y, eps=eps, norm="linf", seed=0, batch_size=5)

    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng_state)  # torchattacks' reseeding does not leak
    check_in_ball_and_box(x_aa, x, eps, "linf")
    x_pgd = pgd(model, x, y, eps=eps, steps=10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        aa_robust, pgd_robust = model(x_aa).argmax(1) == y, model(x_pgd).argmax(1) == y
    assert torch.equal(aa_robust, exact_robust)
    assert bool((pgd_robust | ~aa_robust).all())  # AA-robust ⇒ PGD-robust
    assert aa_robust.sum() <= pgd_robust.sum()
    # the same through the evaluation helper: worst case <= every attack <= clean
    attacks = {
        "pgd": lambda a, b: pgd(model, a, b, eps=eps, steps=10),
        "aa": lambda a, b: x_aa,  # every image is correct clean (y is the prediction), so a is x
    }
    rows = robust_accuracy(model, [(x, y, torch.arange(len(x)))], attacks)
    assert [r["aa_correct"] for r in rows] == exact_robust.long().tolist()
    for r in rows:
        assert r["worst_correct"] <= min(r["pgd_correct"], r["aa_correct"]) <= r["clean_correct"] == 1
    assert model.training


def test_autoattack_argument_checks():
    model, x, y = nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), torch.rand(2, *SHAPE), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="norm"):
        autoattack(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="version"):
        autoattack(model, x, y, eps=0.1, version="custom")
    with pytest.raises(ValueError, match="at least 4 classes"):
        autoattack(model, x, y, eps=0.1)
    assert torch.equal(autoattack(model, x, y, eps=0.0), x)


# ------------------------------------------------------------------------------------------------------
# msds attack
# ------------------------------------------------------------------------------------------------------


def test_parse_eps():
    assert parse_eps("8/255") == 8 / 255 and parse_eps("0.5") == 0.5
    for bad in ("-1/255", "eight", "1/0"):
        with pytest.raises(Exception, match="eps|fraction"):
            parse_eps(bad)


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory):
    """A ``msds_small_cnn`` (width 8, 1 channel) briefly trained on the digits' train split, as safetensors."""
    import timm
    from safetensors.torch import save_file

    import msds_lightning.models  # noqa: F401  (registers msds_small_cnn)
    from msds_lightning.data import DigitsDataModule

    data = DigitsDataModule(image_size=8, channels=1)
    images, labels = data.all_tensors()
    train = torch.from_numpy(data.split_indices("train"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model("msds_small_cnn", num_classes=10, in_chans=1, width=8)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
        for _ in range(60):
            batch = train[torch.randint(0, len(train), (128,))]
            loss = nn.functional.cross_entropy(net((images[batch] - 0.5) / 0.5), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    path = tmp_path_factory.mktemp("attack_cli") / "cnn.safetensors"
    save_file(net.eval().state_dict(), path)
    return path


def test_attack_cli_on_digits_end_to_end(digits_cnn, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "attack" / "digits.tsv"
    argv = ["--model-name", "msds_small_cnn", "--checkpoint", str(digits_cnn), "--model-kwargs",
            '{"in_chans": 1, "width": 8}', "--mean", "0.5", "--std", "0.5", "--data", "digits", "--max", "16",
            "--norm", "linf", "--eps", "3/10", "--pgd-steps", "3", "--batch-size", "8", "--device", "cpu",
            "--output", str(out)]  # fmt: skip
    assert msds(["attack", *argv]) == 0
    printed = capsys.readouterr().out

    with out.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = [{k: int(v) for k, v in r.items()} for r in reader]
        assert tuple(reader.fieldnames) == COLUMNS
    assert [r["idx"] for r in rows] == list(range(16))
    from msds_lightning.data import DigitsDataModule

    dataset = DigitsDataModule(image_size=8, channels=1, max=16).predict_dataset()
    assert [r["label"] for r in rows] == [dataset[i][1] for i in range(16)]
    for r in rows:
        assert r["clean_correct"] == int(r["clean_pred"] == r["label"])
        for a in ("pgd", "aa"):
            assert r[f"{a}_correct"] == int(r["clean_correct"] and r[f"{a}_pred"] == r["label"])
        assert r["worst_correct"] == min(r["clean_correct"], r["pgd_correct"], r["aa_correct"])
    clean = sum(r["clean_correct"] for r in rows)
    robust = {a: sum(r[f"{a}_correct"] for r in rows) for a in ("pgd", "aa", "worst")}
    assert clean >= 10  # the briefly trained CNN is a real classifier
    assert max(robust.values()) <= clean and robust["worst"] <= min(robust["pgd"], robust["aa"])

    summary = out.with_suffix(".md").read_text()
    assert summary in printed
    assert f"| clean | {100 * clean / 16:.2f} | {clean} | 16 |" in summary
    assert f"| {100 * robust['aa'] / 16:.2f} | {robust['aa']} | 16 |" in summary
    assert "PGD-3 (CE), ℓ∞ ε=3/10" in summary and "AutoAttack (standard)" in summary

    # a second run resumes (nothing left to do) and gives the same summary; other settings are refused
    assert msds(["attack", *argv]) == 0
    assert out.with_suffix(".md").read_text() == summary and len(out.read_text().splitlines()) == 17
    assert msds(["attack", *argv, "--eps", "8/255"]) == 2
    assert "eps: 0.3 -> 0.0313" in capsys.readouterr().err

    # a damaged row is reported with its line, left out and redone; the rewritten file is clean
    assert read_rows(out) == rows  # what the demo's report reads
    lines = out.read_text().splitlines()
    out.write_text("\n".join([*lines[:5], lines[5][:3], *lines[6:]]) + "\n")
    with pytest.raises(ValueError, match=f"{out}:6"):
        read_rows(out)
    assert msds(["attack", *argv]) == 0
    assert f"{out}:6" in capsys.readouterr().err
    assert [r["idx"] for r in read_rows(out)] == list(range(16))
    redone = out.read_text().splitlines()
    assert len(redone) == len(lines) and [r.split("\t")[:3] for r in redone] == [r.split("\t")[:3] for r in lines]
    assert redone[:5] == lines[:5] and redone[6:] == lines[6:]  # PGD's random start may differ for the redone image
    # other weights at the same checkpoint path: refused (checkpoints are identified by content)
    original = digits_cnn.read_bytes()
    try:
        from safetensors.torch import load_file, save_file

        weights = load_file(digits_cnn)
        save_file({k: v + 1 for k, v in weights.items()}, digits_cnn)
        assert msds(["attack", *argv]) == 2
        assert 'checkpoint: "sha256:' in capsys.readouterr().err
    finally:
        digits_cnn.write_bytes(original)


def test_attack_cli_reports_a_missing_checkpoint(tmp_path, capsys):
    argv = ["--model-name", "msds_small_cnn", "--checkpoint", str(tmp_path / "nope.safetensors"), "--data",
            "digits", "--max", "2", "--output", str(tmp_path / "out.tsv")]  # fmt: skip
    assert msds(["attack", *argv]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_attack_cli_on_cifar_folders(tmp_path, capsys):
    """CIFAR-10 through CIFAR10DataModule (fake files, PGD only, l2); a missing CIFAR-100 folder is named."""
    import timm
    from safetensors.torch import save_file

    import msds_lightning.models  # noqa: F401  (registers msds_small_cnn)

    from .tiny_models import write_fake_cifar10

    write_fake_cifar10(tmp_path / "cifar10", n_train=5, n_test=6)
    torch.manual_seed(0)
    save_file(
        timm.create_model("msds_small_cnn", in_chans=3, width=4).state_dict(), tmp_path / "cnn.safetensors"
    )
    out = tmp_path / "cifar.tsv"
    argv = ["--model-name", "msds_small_cnn", "--checkpoint", str(tmp_path / "cnn.safetensors"), "--model-kwargs",
            '{"in_chans": 3, "width": 4}', "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5",
            "--root", str(tmp_path / "cifar10"), "--skip", "2", "--norm", "l2", "--eps", "128/255",
            "--attacks", "pgd", "--pgd-steps", "2", "--pgd-restarts", "2", "--num-workers", "0",
            "--output", str(out)]  # fmt: skip
    assert msds(["attack", *argv]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == list(columns(["pgd"])) and len(lines) == 4
    assert [int(line.split("\t")[0]) for line in lines[1:]] == [0, 2, 4]
    assert "PGD-2 (CE, 2 restarts), ℓ2 ε=128/255" in capsys.readouterr().out

    argv = [*argv[: argv.index("--root")], "--data", "cifar100", "--root", str(tmp_path / "none"),
            "--output", str(tmp_path / "c100.tsv")]  # fmt: skip
    assert msds(["attack", *argv]) == 2
    assert "CIFAR-100 not found" in capsys.readouterr().err


@pytest.mark.parametrize(("num_classes", "targets"), [(10, 9), (100, 9), (4, 3)])
def test_autoattack_uses_the_reference_settings(num_classes, targets):
    """torchattacks 3.5.1 builds APGD/APGD-T/FAB with 10 iterations and all other classes as targets;
    fra31/auto-attack (DM-Improves-AT's evaluation) runs 100 iterations on the top 9 other classes."""
    import torchattacks

    from msds_lightning.robustness.attacks import _match_reference_autoattack

    model = nn.Sequential(nn.Flatten(), nn.Linear(192, num_classes))
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=0.1, n_classes=num_classes, seed=0)
    _match_reference_autoattack(attack, num_classes)
    subs = {type(a).__name__: a for a in attack._autoattack.attacks}
    assert sorted(subs) == ["APGD", "APGDT", "FAB", "Square"]
    assert subs["APGD"].steps == subs["APGDT"].steps == subs["FAB"].steps == 100
    assert subs["APGDT"].n_target_classes == subs["FAB"].n_target_classes == targets
    assert (
        subs["FAB"].multi_targeted
        and subs["Square"].n_queries == 5000
        and not subs["Square"].rescale_schedule
    )
    assert subs["APGD"].loss == "ce" and all(a.n_restarts == 1 for a in subs.values())
