"""Tracker: a run written to a temporary Aim repo reads back in step order with its config."""

import numpy as np
import pytest

from trm.run_config import RunConfig, TrackingConfig
from trm.tracking import Tracker


def test_disabled_tracker_is_a_noop(tmp_path):
    cfg = TrackingConfig(track=False, repo=str(tmp_path / "aim"))
    with Tracker.open(cfg, RunConfig()) as tracker:
        assert not tracker.enabled
        tracker.track({"loss": 1.0}, step=1)
    assert not (tmp_path / "aim").exists()


def test_run_reads_back_in_step_order(tmp_path):
    aim = pytest.importorskip("aim")
    from aim.sdk.index_manager import RepoIndexManager

    repo_dir = str(tmp_path / "aim")
    aim.Repo.from_path(repo_dir, init=True)
    cfg = TrackingConfig(repo=repo_dir, experiment="unit", run_name="tiny run",
                         tags=("cpu", "test"))
    run_cfg = RunConfig(tracking=cfg)
    losses = {3: 0.5, 1: 2.0, 2: np.float32(1.0)}      # logged out of order, numpy scalar
    with Tracker.open(cfg, run_cfg) as tracker:
        for step, loss in losses.items():
            tracker.track({"loss": loss, "lr": 1e-4 * step}, step)
        tracker.track({"exact_accuracy": 0.25}, 3, context={"subset": "test"})
        run_hash = tracker.run_hash
    repo = aim.Repo.from_path(repo_dir)
    RepoIndexManager.get_index_manager(repo).index(run_hash)

    found = list(repo.query_metrics(
        "metric.name == 'loss' and run.hparams.optim.lr == 0.0001 "
        "and metric.context.subset == 'train'").iter())
    assert len(found) == 1
    steps, (values, _, _) = found[0].data.items_list()
    assert list(steps) == [1, 2, 3]
    np.testing.assert_allclose(values, [2.0, 1.0, 0.5])
    run = found[0].run
    assert run.name == "tiny run" and run.experiment == "unit"
    assert sorted(run.tags) == ["cpu", "test"]
    assert run["hparams"]["model"]["hidden_size"] == run_cfg.model.hidden_size
    test_acc = list(repo.query_metrics("metric.context.subset == 'test'").iter())
    assert [m.name for m in test_acc] == ["exact_accuracy"]


@pytest.mark.parametrize("spelling", [".aim", "."])
def test_a_run_is_found_again_under_the_repo_it_was_written_to(tmp_path, monkeypatch, spelling):
    """The default `--tracking.repo .aim` and `--repo .` are one repository for Aim (it drops a
    trailing .aim); reopening a run by hash must look where the run was written."""
    pytest.importorskip("aim")
    from trm.tracking import open_aim_run, repo_data_dir

    monkeypatch.chdir(tmp_path)
    assert repo_data_dir(spelling) == tmp_path / ".aim"
    assert repo_data_dir(tmp_path / "runs") == tmp_path / "runs" / ".aim"
    with Tracker.open(TrackingConfig(repo=spelling), RunConfig()) as tracker:
        run_hash = tracker.run_hash
    assert (tmp_path / ".aim").is_dir() and not (tmp_path / ".aim" / ".aim").exists()
    for repo in (".aim", "."):
        run = open_aim_run(repo, run_hash=run_hash)
        assert run.hash == run_hash
        run.close()


def test_a_repository_that_cannot_be_written_is_refused_before_the_run(tmp_path):
    from data.common import DataError
    from trm.tracking import check_repo

    (tmp_path / "a_file").write_text("")
    with pytest.raises(DataError, match="cannot write to the Aim repository .*a_file is a file"):
        check_repo(str(tmp_path / "a_file" / "aim"))
    check_repo(str(tmp_path / "new" / "aim"))  # created later, where it can be
    assert not (tmp_path / "new").exists()
