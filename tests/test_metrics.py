import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from msds_lightning.metrics import CertifiedAccuracy, certified_accuracy_at_radii
from msds_lightning.results.analysis import average_certified_radius, certified_accuracy

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def random_rows(n: int, seed: int):
    """Rows with abstentions, radii exactly on the grid (ties) and radii just below/above grid points."""
    rng = np.random.default_rng(seed)
    radius = rng.uniform(0, 1.2, size=n)
    kind = rng.integers(0, 4, size=n)
    on_grid = rng.choice(RADII, size=n)
    radius = np.where(kind == 0, on_grid, radius)  # ties: radius == r must count at r
    radius = np.where(kind == 1, np.nextafter(on_grid, -np.inf).clip(0), radius)  # just below a grid point
    correct = rng.integers(0, 2, size=n)
    abstain = rng.random(n) < 0.2
    radius[abstain], correct[abstain] = 0.0, 0
    return radius, correct


def test_functional_matches_analysis_exactly_including_ties():
    radius, correct = random_rows(500, seed=1)
    # ties exercised: radii exactly at, and one ulp below, grid points
    assert (radius == 0.5).sum() > 5 and (radius == np.nextafter(0.5, 0)).sum() > 5
    grid = (*RADII, 0.1, 1e-3)  # 0.1 is not a float32 number: the comparison must stay in float64
    got = certified_accuracy_at_radii(torch.from_numpy(radius), torch.from_numpy(correct), grid)
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), certified_accuracy(radius, correct, grid))


@pytest.mark.parametrize("batch", [1, 7, 500])
def test_metric_matches_analysis_on_random_data(batch):
    radius, correct = random_rows(500, seed=2)
    metric = CertifiedAccuracy(RADII)
    order = np.random.default_rng(3).permutation(500)  # rows arrive in any order
    for start in range(0, 500, batch):
        rows = order[start : start + batch]
        metric.update(
            torch.from_numpy(rows), torch.from_numpy(radius[rows]), torch.from_numpy(correct[rows] == 1)
        )
    out = metric.compute()
    np.testing.assert_array_equal(out["accuracy"].numpy(), certified_accuracy(radius, correct, RADII))
    assert out["acr"].item() == pytest.approx(average_certified_radius(radius, correct), rel=1e-12)
    assert out["count"].item() == 500


def test_tie_at_grid_radius_counts_and_abstentions_count_in_denominator():
    metric = CertifiedAccuracy((0.0, 0.5, 0.75))
    # correct at exactly 0.5; correct just below 0.5; wrong with a large radius; abstention
    metric.update(
        torch.tensor([0, 1, 2, 3]), torch.tensor([0.5, 0.4999, 2.0, 0.0]), torch.tensor([1, 1, 0, 0])
    )
    out = metric.compute()
    assert out["accuracy"].tolist() == [0.5, 0.25, 0.0]
    assert out["acr"].item() == pytest.approx((0.5 + 0.4999) / 4)


def test_padded_duplicate_is_counted_once():
    radius, correct = random_rows(7, seed=4)
    metric = CertifiedAccuracy(RADII)
    metric.update(torch.arange(7), torch.from_numpy(radius), torch.from_numpy(correct))
    metric.update(torch.tensor([0]), torch.from_numpy(radius[:1]), torch.from_numpy(correct[:1]))  # padding
    out = metric.compute()
    assert out["count"].item() == 7
    np.testing.assert_array_equal(out["accuracy"].numpy(), certified_accuracy(radius, correct, RADII))
    index, _, _ = metric.rows()
    assert index.tolist() == list(range(7))


def test_conflicting_duplicate_raises():
    metric = CertifiedAccuracy(RADII)
    metric.update(torch.tensor([3, 4]), torch.tensor([0.5, 0.2]), torch.tensor([1, 1]))
    metric.update(torch.tensor([4]), torch.tensor([0.3]), torch.tensor([1]))
    with pytest.raises(ValueError, match="index 4 appears twice"):
        metric.compute()
    metric.reset()
    metric.update(
        torch.tensor([4, 4]), torch.tensor([0.2, 0.2]), torch.tensor([1, 0])
    )  # same radius, other answer
    with pytest.raises(ValueError, match="index 4"):
        metric.compute()


def test_forward_returns_batch_value_and_accumulates():
    metric = CertifiedAccuracy((0.0, 0.5))
    batch = metric(torch.tensor([0, 1]), torch.tensor([0.6, 0.0]), torch.tensor([1, 0]))
    assert batch["accuracy"].tolist() == [0.5, 0.5]
    metric(torch.tensor([2]), torch.tensor([0.2]), torch.tensor([1]))
    assert metric.compute()["accuracy"].tolist() == [2 / 3, 1 / 3]
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute()["count"].item() == 0


def test_empty_metric_gives_nan():
    with pytest.warns(UserWarning, match="before the ``update``"):
        out = CertifiedAccuracy(RADII).compute()
    assert out["count"].item() == 0
    assert torch.isnan(out["accuracy"]).all() and out["accuracy"].shape == (len(RADII),)
    assert torch.isnan(out["acr"])


def test_radii_buffer_is_not_state_and_not_saved():
    metric = CertifiedAccuracy([0.0, 0.1])
    assert metric.radii.dtype == torch.float64 and metric.radii.tolist() == [0.0, 0.1]
    assert "radii" not in metric.state_dict()
    assert set(metric._defaults) == {"index", "radius", "correct"}
    metric.half()  # a module-wide cast must not change which radii count as certified
    metric.update(torch.tensor([0]), torch.tensor([0.1], dtype=torch.float64), torch.tensor([1]))
    assert metric.compute()["accuracy"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"radii": []}, "radii"),
        ({"radii": [0.0, -0.5]}, "radii"),
        ({"radii": [0.0, float("nan")]}, "radii"),
        ({"radii": ["a"]}, "radii"),
    ],
)
def test_bad_radii_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CertifiedAccuracy(**kwargs)


@pytest.mark.parametrize(
    ("index", "radius", "correct", "match"),
    [
        ([0, 1], [0.1], [1, 1], "same length"),
        ([[0, 1]], [[0.1, 0.2]], [[1, 1]], "index must be 1-D"),
        ([0.0, 1.0], [0.1, 0.2], [1, 1], "index must hold integers"),
        ([0, 1], [0.1, -0.2], [1, 1], "radius"),
        ([0, 1], [0.1, float("inf")], [1, 1], "radius"),
        ([0, 1], [0.1, 0.2], [1, 2], "correct"),
    ],
)
def test_bad_update_raises(index, radius, correct, match):
    metric = CertifiedAccuracy(RADII)
    with pytest.raises(ValueError, match=match):
        metric.update(torch.tensor(index), torch.tensor(radius), torch.tensor(correct))
    assert metric.rows()[0].numel() == 0  # nothing half-added


# ---- DDP: two gloo processes on CPU ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, cases: dict, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results = {}
        for name, (radius, correct, shards) in cases.items():
            metric = CertifiedAccuracy(RADII)
            rows = shards[rank]
            for start in range(0, len(rows), 3):  # several updates per rank
                batch = torch.tensor(rows[start : start + 3], dtype=torch.int64)
                metric.update(batch, radius[batch], correct[batch])
            results[name] = {k: v.clone() for k, v in metric.compute().items()}
            results[name]["local_count"] = metric.rows()[0].numel()  # states are unsynced after compute
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_ddp_two_processes_equal_single_process_exactly(tmp_path):
    radius, correct = random_rows(7, seed=5)
    radius[2] = 0.5  # a tie at a grid radius on a rank
    correct[2] = 1
    radius_t, correct_t = torch.from_numpy(radius), torch.from_numpy(correct)
    padded = [list(DistributedSampler(range(7), num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert padded == [[0, 2, 4, 6], [1, 3, 5, 0]]  # the sampler pads rank 1 with a repeat of index 0
    cases = {
        "uneven": (radius_t, correct_t, [[0, 1, 2, 3], [4, 5, 6]]),  # 4/3, like the predict sampler
        "padded": (radius_t, correct_t, padded),
        "empty_rank": (radius_t[:1], correct_t[:1], [[0], []]),  # a rank with no rows at all
    }
    # fork, not spawn: a spawned child re-imports torch and torchmetrics (~15 s each on 2 cores)
    mp.start_processes(
        _ddp_worker, args=(2, _free_port(), cases, str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    for name, (rad, cor, shards) in cases.items():
        single = CertifiedAccuracy(RADII)
        single.update(torch.arange(len(rad)), rad, cor)
        expected = single.compute()
        np.testing.assert_array_equal(
            expected["accuracy"].numpy(), certified_accuracy(rad.numpy(), cor.numpy(), RADII)
        )
        for rank, result in enumerate(results):
            got = result[name]
            assert got["local_count"] == len(set(shards[rank])), (name, rank)
            assert got["count"].item() == len(rad), (name, rank)
            torch.testing.assert_close(got["accuracy"], expected["accuracy"], rtol=0, atol=0)
            # the gathered rows come in rank order, not index order: allow the last bit of the float sum
            torch.testing.assert_close(got["acr"], expected["acr"], rtol=1e-15, atol=0)
