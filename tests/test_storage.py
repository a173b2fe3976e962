"""URLs for outputs, checkpoints and data sets (`data.storage`), against a stand-in `gs://`
file system: fsspec's local file system under a temporary root, registered for the `gs`
protocol that `etils.epath` opens through fsspec (what gcsfs does on Google Cloud)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from etils import epath
from fsspec.implementations.local import LocalFileSystem
from test_data_fixtures import built_sudoku
from test_evaluate_cli import save_tiny_checkpoint

import evaluate as evaluate_cli
from data.common import atomic_file
from data.storage import as_path, is_url, local_copy
from trm.checkpoint import Checkpointer
from trm.config import ConfigError, ModelConfig
from trm.eval_source import restore_checkpoint
from trm.preflight import prepare_data
from trm.run_config import CheckpointConfig, parse_cli

fsspec_registry = sys.modules["fsspec.registry"]


class FakeGCS(LocalFileSystem):
    """gs://bucket/key -> <root>/bucket/key on the local disk."""

    protocol = ("gs", "gcs")
    root = ""
    cachable = False

    def __init__(self, *args, finalize_on_close: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        if path.startswith(("gs://", "gcs://")):
            path = f"{cls.root}/{path.split('://', 1)[1]}"
        return super()._strip_protocol(path)


@pytest.fixture
def bucket(tmp_path, monkeypatch) -> Path:
    """The local folder behind gs://bucket (and TRM_DATA_CACHE in tmp_path/cache)."""
    monkeypatch.setattr(FakeGCS, "root", str(tmp_path / "gcs"))
    for name in ("gs", "gcs"):
        monkeypatch.setitem(fsspec_registry._registry, name, FakeGCS)
    epath.backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.setenv("TRM_DATA_CACHE", str(tmp_path / "cache"))
    (tmp_path / "gcs" / "bucket").mkdir(parents=True)
    yield tmp_path / "gcs" / "bucket"
    epath.backend.fsspec_backend._get_filesystem.cache_clear()


def _built_sudoku(tmp_path: Path, n_test: int) -> Path:
    (tmp_path / "build").mkdir()
    return built_sudoku(tmp_path / "build", n_train=8, n_test=n_test)


def test_urls_keep_their_double_slash(bucket):  # gs:// served by the stand-in
    assert is_url("gs://b/x") and not is_url("runs/x") and not is_url(Path("/tmp/x"))
    assert str(as_path("gs://b/run") / "checkpoints") == "gs://b/run/checkpoints"
    assert str(as_path("gs://b/res.json").with_name("res_per_step.png")) == \
        "gs://b/res_per_step.png"


def test_atomic_file_uploads_whole_files_only(bucket):
    with atomic_file("gs://bucket/out/a.json") as tmp:
        tmp.write_text("{}")
    assert (bucket / "out/a.json").read_text() == "{}"
    with pytest.raises(RuntimeError), atomic_file("gs://bucket/out/b.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("stopped")
    assert sorted(p.name for p in (bucket / "out").iterdir()) == ["a.json"]


def test_data_sets_from_a_url_are_copied_once_and_refreshed(bucket, tmp_path):
    shutil.copytree(_built_sudoku(tmp_path, n_test=4), bucket / "sudoku")
    local = local_copy("gs://bucket/sudoku")
    assert local.parent == tmp_path / "cache" and local.name.startswith("sudoku-")
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*"))
    assert files == sorted(str(p.relative_to(bucket / "sudoku"))
                           for p in (bucket / "sudoku").rglob("*"))
    marker = local / "test" / "seen"
    marker.write_text("")
    assert local_copy("gs://bucket/sudoku") == local and marker.exists()  # not copied again
    meta = json.loads((bucket / "sudoku/metadata.json").read_text())
    (bucket / "sudoku/metadata.json").write_text(json.dumps({**meta, "note": "rebuilt"}))
    assert local_copy("gs://bucket/sudoku") == local and not marker.exists()
    assert json.loads((local / "metadata.json").read_text())["note"] == "rebuilt"
    assert local_copy(tmp_path / "build/sudoku") == tmp_path / "build/sudoku"  # local paths as they are
    with pytest.raises(FileNotFoundError, match="gs://bucket/nothing: not a built data set"):
        local_copy("gs://bucket/nothing")
    with pytest.raises(ConfigError, match="--data.data-dir gs://bucket/sudoku: the generated"):
        parse_cli(["sudoku-tiny", "--data.data-dir", "gs://bucket/sudoku"])
    no_generate = parse_cli(["sudoku-tiny", "--data.data-dir", "gs://bucket/sudoku",
                             "--data.generate", "none"])
    assert prepare_data(no_generate) == local


def test_checkpoint_directories_may_be_urls(bucket, tmp_path, monkeypatch):
    """The manager opens the URL itself (orbax writes arrays to gs:// through tensorstore's
    GCS driver, which this stand-in cannot serve: saving is not tested here)."""
    from orbax.checkpoint._src.path import gcs_utils

    # asks the real bucket (google-cloud-storage) whether it has a hierarchical namespace
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda _: False)
    with Checkpointer("gs://bucket/run/checkpoints", CheckpointConfig(async_save=False),
                      ModelConfig()) as ckpt:
        assert ckpt.directory == "gs://bucket/run/checkpoints"
        assert ckpt.latest_step() is None
    assert (bucket / "run/checkpoints").is_dir()
    monkeypatch.chdir(tmp_path)
    with Checkpointer("local/ckpt", CheckpointConfig(async_save=False), ModelConfig()) as ckpt:
        assert ckpt.directory == str(tmp_path / "local/ckpt")
    with pytest.raises(FileNotFoundError, match="^gs://bucket/nowhere: no such checkpoint"):
        restore_checkpoint("gs://bucket/nowhere")


def test_evaluation_reads_a_data_url_and_writes_its_outputs_to_a_url(bucket, tmp_path, capsys):
    data = _built_sudoku(tmp_path, n_test=12)
    shutil.copytree(data, bucket / "sudoku")
    ckpt, _ = save_tiny_checkpoint(tmp_path / "run", data)
    assert evaluate_cli.main(["--checkpoint-dir", str(ckpt), "--data-dir", "gs://bucket/sudoku",
                              "--no-progress", "--out", "gs://bucket/eval/res.json"]) == 0
    assert "wrote gs://bucket/eval/res.json, gs://bucket/eval/res_per_step.png" in \
        capsys.readouterr().out
    assert sorted(p.name for p in (bucket / "eval").iterdir()) == ["res.json",
                                                                   "res_per_step.png"]
    doc = json.loads((bucket / "eval/res.json").read_text())
    assert doc["data_dir"] == "gs://bucket/sudoku"
    assert doc["plot"] == "gs://bucket/eval/res_per_step.png"
    assert (bucket / "eval/res_per_step.png").read_bytes().startswith(b"\x89PNG")
    assert doc["sets"]["test"]["metrics"]["count"] == 12


def test_sweeps_keep_done_markers_at_a_url_root_and_logs_here(bucket, tmp_path, monkeypatch):
    from sweeps import runner
    from sweeps.catalog import select
    from sweeps.script import script

    fake = tmp_path / "train.py"
    fake.write_text("import sys\nprint('training', sys.argv[-1])\n")
    monkeypatch.setattr(runner, "TRAIN_PY", fake)
    monkeypatch.chdir(tmp_path)
    runs = runner.plan(select("exp05_a"), runner.Settings(root="gs://bucket/study", track=False))
    assert str(runs[0].run_dir) == "gs://bucket/study/exp05_a"
    assert [o.status for o in runner.run_all(runs, poll_s=0.05, say=lambda _: None)] == ["done"]
    assert (bucket / "study/exp05_a/DONE").read_text().strip() == runs[0].command
    assert "training" in (tmp_path / "runs/sweep-logs/bucket/study/exp05_a/train.log").read_text()
    again = runner.run_all(runs, poll_s=0.05, say=lambda _: None)
    assert [o.status for o in again] == ["skipped"]
    with pytest.raises(ValueError, match="give a local --root"):
        script(runs, "x")


def test_a_url_without_its_file_system_is_one_error_line(tmp_path, capsys):
    """An unknown scheme, one fsspec knows but etils.epath (orbax's paths) does not, or gs://
    without gcsfs stops with one line, not a traceback."""
    import evaluate as evaluate_cli

    for scheme in ("nosuchfs", "file", "memory"):
        with pytest.raises(ValueError, match=f"unsupported storage scheme {scheme}:// "
                                             r"\(supported: .*gs://"):
            as_path(f"{scheme}://bucket/x")
    out = tmp_path / "res.json"
    rc = evaluate_cli.main(["--checkpoint-dir", "/tmp", "--out", f"file://{out}",
                            "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: file://{out}: unsupported storage scheme")
    out = tmp_path / "res.json"
    rc = evaluate_cli.main(["--checkpoint-dir", "nosuchfs://bucket/run/checkpoints",
                            "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: nosuchfs://bucket/run/checkpoints: ")
    assert "\n" not in err and not out.exists()


def test_scratch_dirs_left_by_dead_processes_of_this_host_are_removed(tmp_path):
    """kill -9 during a data set's generation left `.ds.csv-XXXX` next to it for good: the
    next scratch directory of that kind removes those whose process is gone (this host's
    only; live processes' and other hosts' stay)."""
    import socket
    import subprocess

    from data.storage import scratch_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = socket.gethostname()
    out = tmp_path / "ds"
    left = {name: tmp_path / name for name in (
        f".ds.csv-{host}-{dead.stdout.strip()}-abc",  # its process ended: removed
        f".ds.csv-{host}-{os.getpid()}-def",          # alive (this one)
        f".ds.csv-other-host-{dead.stdout.strip()}-ghi",  # another host's: not ours to judge
        f".ds.tmp-{host}-{dead.stdout.strip()}-jkl",  # another kind: its own calls tidy it
        ".ds.csv-abcdef")}                            # an older version's name
    for d in left.values():
        (d / "train.csv").parent.mkdir()
        (d / "train.csv").write_text("x")
    new = scratch_dir(out, "csv")
    assert new.is_dir() and new.name.startswith(f".ds.csv-{host}-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new.name, *list(left)[1:]])
