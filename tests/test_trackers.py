"""Training curves in TensorBoard (every unit, every epoch, read back with TensorBoard's own reader) and MLflow
(where installed), continued without duplicates after a resume."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import train, train_interrupted

from timnet import load_config
from timnet.core.errors import TimnetError


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_every_unit_writes_its_epochs_to_tensorboard(trained_run):
    root, _, run = trained_run
    for unit in ("fold_1", "fold_2"):
        got = scalars(root / "logs" / run.run_id / unit)
        history = pd.read_csv(root / "logs" / run.run_id / f"{unit}.csv")
        assert [s for s, _ in got["loss"]] == [1, 2, 3]
        assert [v for _, v in got["loss"]] == pytest.approx(history.loss.tolist(), rel=1e-6)
        assert [v for _, v in got["accuracy/train"]] == pytest.approx(history.train_acc.tolist(), rel=1e-6)
        assert [s for s, _ in got["accuracy/test"]] == [3]  # logged at the last epoch only (test_every = 10)
        assert "accuracy/validation" not in got  # no validation part carved under `last`
        assert [v for _, v in got["learning_rate"]] == pytest.approx([0.001] * 3)


def test_a_resumed_unit_continues_its_curves_without_repeating_epochs(tmp_path, mfcc, monkeypatch):
    """Resumed in the same process and second, with TensorBoard's file counter at 9: the resumed unit's event file
    (counter 10 or more) would sort before the first one (9), and the first file's epochs would purge its own."""
    from tensorboard.summary.writer import event_file_writer

    from timnet.training import unit as unit_module

    monkeypatch.setattr(event_file_writer._global_uid, "_value", 9)

    stop_after_two = lambda self, progress: progress.epoch == 2  # noqa: E731
    run_id = train_interrupted(
        tmp_path, mfcc, monkeypatch, unit_module.UnitTrainer, "save", stop_after_two, folds=2, epochs=4
    )
    train(tmp_path, None, resume=run_id)
    got = scalars(tmp_path / "logs" / run_id / "fold_1")
    assert [s for s, _ in got["loss"]] == [1, 2, 3, 4]


def test_mlflow_is_asked_for_and_needs_its_extra(tmp_path, mfcc):
    try:
        import mlflow  # noqa: F401
    except ImportError:
        needs = r"fold_1: log\.mlflow = true needs mlflow: python3 -m pip install 'timnet\[mlflow\]' "
        needs += r"\(or set log\.mlflow=false\)$"
        with pytest.raises(TimnetError, match=needs):
            train(tmp_path, mfcc, folds=2, epochs=1, settings={"log.mlflow": True})
        return
    run = train(tmp_path, mfcc, folds=2, epochs=2, settings={"log.mlflow": True})
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "logs" / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("timnet EMODB")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"{run.run_id}/fold_1", f"{run.run_id}/fold_2"]
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    assert [m.step for m in history] == [1, 2]
    assert load_config("EMODB").log.mlflow is False


def test_the_curves_and_the_epoch_log_show_the_learning_rate_the_schedule_set(tmp_path, mfcc):
    run = train(tmp_path, mfcc, folds=2, epochs=3, lr_schedule="step", lr_step_size=2, lr_gamma=0.1)
    history = pd.read_csv(tmp_path / "logs" / run.run_id / "fold_1.csv")
    assert history.lr.tolist() == pytest.approx([0.001, 0.001, 0.0001])
    got = scalars(tmp_path / "logs" / run.run_id / "fold_1")
    assert [v for _, v in got["learning_rate"]] == pytest.approx([0.001, 0.001, 0.0001])
