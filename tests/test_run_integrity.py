"""Guards of resumable result files (msds_lightning.runs, msds_lightning.results): row validation, the
output lock, fingerprints, write errors, file modes, and `msds analyze` on odd files. The end-to-end
cases through `msds certify` are in test_certify_cli.py and test_scale_out.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from msds_lightning.cli import main
from msds_lightning.results import ResultWriter, merge_result_files, scan_result_files
from msds_lightning.runs import OutputLock, check_fingerprint, content_digest, fingerprint, write_fingerprint

from .conftest import REPO
from .lock_holder import held_by_another_process

HEAD = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tsigma"


def row(idx: int, label: int = 3, predict: int = 3, radius: str = "0.5", time: str = "0:00:01") -> str:
    return f"{idx}\t{label}\t{predict}\t{radius}\t{int(predict == label)}\t{time}\t0.25"


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    "line,reason",
    [
        ("4\t3\t", "fields"),
        ("x\t3\t3\t0.5\t1\t0:00:01\t0.25", "unreadable"),
        ("12\t3\t3\t0.5\t1\t0:00:01\t0.25", "outside the data set"),
        ("4\t3\t3\tnan\t1\t0:00:01\t0.25", "finite"),
        ("4\t3\t3\t0.5\t0\t0:00:01\t0.25", "contradicts"),
        ("4\t3\t-2\t0.5\t0\t0:00:01\t0.25", "out of range"),
    ],
)
def test_malformed_rows_are_reported_with_file_and_line_and_never_merged(tmp_path, line, reason):
    shard = write(tmp_path / "rank0.tsv", HEAD, row(0), line, row(5))
    scan = scan_result_files([shard], size=10)
    assert set(scan.rows) == {0, 5}
    assert (
        len(scan.problems) == 1 and scan.problems[0].startswith(f"{shard}:3: ") and reason in scan.problems[0]
    )
    out = tmp_path / "merged.tsv"
    assert merge_result_files([shard], out, size=10) == 2
    assert out.read_text() == "".join(x + "\n" for x in (HEAD, row(0), row(5)))


def test_conflicting_rows_name_both_places_and_repeats_may_differ_in_time(tmp_path):
    a = write(tmp_path / "rank0.tsv", HEAD, row(1))
    b = write(tmp_path / "rank1.tsv", HEAD, row(1, time="0:00:09"), row(2))
    assert set(scan_result_files([a, b]).rows) == {1, 2}  # re-done image: same row, other time
    c = write(tmp_path / "rank2.tsv", HEAD, row(2, predict=4))
    with pytest.raises(ValueError, match=rf"idx 2: {b}:3 and {c}:2 differ"):
        scan_result_files([a, b, c])
    with pytest.raises(ValueError, match="miss 1 index"):
        merge_result_files([a], tmp_path / "out.tsv", expected=[1, 7])


def test_result_writer_appends_and_cuts_an_unfinished_line(tmp_path):
    path = tmp_path / "rank0.tsv"
    path.write_text(HEAD + "\n" + row(0) + "\n" + row(1)[:5])  # killed mid-row
    with ResultWriter(path, extra_columns=("sigma",)) as w:
        w.write(2, 3, 3, 0.5, 1.0, sigma=0.25)
    lines = path.read_text().splitlines()
    assert lines[:2] == [HEAD, row(0)] and lines[2].startswith("2\t3\t3\t0.5\t1\t")


def test_write_errors_name_the_file():
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(OSError, match="cannot write to /dev/full") as excinfo:
        ResultWriter("/dev/full", fsync=False)
    assert excinfo.value.errno == 28  # ENOSPC


def test_output_lock_refuses_a_second_process_and_dies_with_its_holder(tmp_path):
    target = tmp_path / "out.tsv"
    with held_by_another_process(target) as holder:
        with pytest.raises(ValueError, match=rf"host \S+, pid {holder.pid}"):
            OutputLock(target).acquire()
    with OutputLock(target) as lock:  # kill -9 left no stale lock
        assert f"{os.getpid()}" in lock.path.read_text()


def test_fingerprint_identifies_checkpoints_by_content(tmp_path):
    ckpt = tmp_path / "a.safetensors"
    ckpt.write_bytes(b"weights v1")
    moved = tmp_path / "sub" / "b.safetensors"
    moved.parent.mkdir()
    moved.write_bytes(b"weights v1")
    first = fingerprint({"model": {"sigma": 0.25}}, {"model.checkpoint": ckpt})
    assert first == fingerprint({"model": {"sigma": 0.25}}, {"model.checkpoint": moved})
    assert content_digest(tmp_path / "sub") != content_digest(moved)  # a folder hashes names too
    stored = tmp_path / "run.fingerprint.json"
    write_fingerprint(stored, first)
    assert (
        check_fingerprint(stored, first, has_rows=True, rows_in="run.tsv", overwrite_hint="--overwrite")
        is False
    )
    ckpt.write_bytes(b"weights v2")
    changed = fingerprint({"model": {"sigma": 0.25}}, {"model.checkpoint": ckpt})
    with pytest.raises(ValueError, match='model.checkpoint: "sha256:'):
        check_fingerprint(stored, changed, has_rows=True, rows_in="run.tsv", overwrite_hint="--overwrite")
    # no rows yet (a run that failed before its first image): nothing to mix, the new one is recorded
    assert check_fingerprint(stored, changed, has_rows=False, rows_in="run.tsv", overwrite_hint="--overwrite")


def test_exported_safetensors_honour_the_umask(tmp_path):
    from msds_lightning.modules.classifier_train import export_classifier

    from .tiny_models import tiny_classifier, tiny_denoiser

    old = os.umask(0o022)
    try:
        export_classifier(tiny_classifier(), str(tmp_path / "clf.safetensors"))
        tiny_denoiser().save_pretrained(tmp_path / "denoiser")
    finally:
        os.umask(old)
    files = [tmp_path / "clf.safetensors", *(p for p in (tmp_path / "denoiser").rglob("*") if p.is_file())]
    assert any(p.suffix == ".safetensors" for p in files[1:])
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}


def test_analyze_refuses_header_only_and_warns_on_non_finite_radii(tmp_path, capsys):
    empty = write(tmp_path / "empty.tsv", HEAD)
    assert main(["analyze", str(empty)]) == 2
    assert "no result rows" in capsys.readouterr().err
    odd = write(tmp_path / "odd.tsv", HEAD, row(0, radius="nan"), row(1, radius="inf"), row(2))
    assert main(["analyze", str(odd), "--radii", "0", "1"]) == 0
    captured = capsys.readouterr()
    assert "1 NaN and 1 infinite radius" in captured.err and str(odd) in captured.err


def test_training_resume_from_an_unloadable_checkpoint_is_one_clear_line(tmp_path, capsys):
    from msds_lightning.runs import check_training_checkpoint

    text = write(tmp_path / "last.ckpt", "not a checkpoint")
    with pytest.raises(ValueError, match=f"{text} is not a torch.save checkpoint"):
        check_training_checkpoint(text)
    import torch

    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a Lightning training checkpoint"):
        check_training_checkpoint(tmp_path / "plain.pt")
    config = REPO / "configs/digits/train_classifier.yaml"
    code = main(["train-classifier", "-c", str(config), "--trainer.logger=false",
                 f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={text}"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and str(text) in err and "Traceback" not in err
