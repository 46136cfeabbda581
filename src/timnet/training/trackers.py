"""Training curves where researchers watch them: TensorBoard scalars per epoch for every unit (`log.tensorboard`,
on by default: `tensorboard --logdir logs` shows every unit of every run), and an MLflow run per unit in a local
store (`log.mlflow`, with the `mlflow` extra). The CSV and PNG beside them stay the record.

Scalars per epoch: loss, accuracy/train, accuracy/validation (where a validation part is carved), accuracy/test
(the epochs it is logged), learning_rate. A resumed unit continues its curves: events of the epochs after the state
it resumed from are purged first, so no epoch is drawn twice.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ..core.config import Config
from ..core.errors import TimnetError, require

SCALARS = {"loss": "loss", "train_acc": "accuracy/train", "val_acc": "accuracy/validation", "test_acc": "accuracy/test"}


class Trackers:
    """The trackers of one unit, opened on its first logged epoch (in the thread that writes its state)."""

    def __init__(self, cfg: Config, logs_dir: Path, unit: str, run_id: str):
        self.cfg, self.folder, self.unit, self.run_id = cfg, Path(logs_dir), unit, run_id
        self.tensorboard = None
        self.mlflow_run = None
        self.failed = False
        if cfg.log.mlflow:
            require("mlflow", "mlflow", "log.mlflow = true", "set log.mlflow=false")

    def epoch(self, row: dict) -> None:
        """One epoch's row of the history (`unit.UnitTrainer.record_epoch`). A tracker that fails (a full disk, an
        MLflow store gone) warns once and stops; training and its own records go on."""
        if self.failed:
            return
        try:
            self._epoch(row)
        except Exception as err:  # noqa: BLE001 — curves are a view of training, never a reason to stop it
            import warnings

            self.failed = True
            why = f"{type(err).__name__}: {err}"
            warnings.warn(f"timnet: the training curves of {self.unit} stop here ({why})", stacklevel=2)

    def _epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        logged = {key: row.get(key) for key in SCALARS}
        values = {SCALARS[k]: float(v) for k, v in logged.items() if v is not None and not math.isnan(float(v))}
        values["learning_rate"] = float(row.get("lr", self.cfg.train.lr))  # rows saved before `lr` was kept
        if self.cfg.log.tensorboard:
            self._write_tensorboard(values, step)
        if self.cfg.log.mlflow:
            self._mlflow().log_metrics({tag.replace("/", "_"): v for tag, v in values.items()}, step=step)

    def _write_tensorboard(self, values: dict, step: int) -> None:
        if self.tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            folder = self.folder / self.unit
            _after_earlier_event_files(folder)
            self.tensorboard = SummaryWriter(log_dir=str(folder), purge_step=step)
        for tag, value in values.items():
            self.tensorboard.add_scalar(tag, value, step)
        self.tensorboard.flush()

    def _mlflow(self) -> "_Logger":
        """This unit's MLflow run in the local store logs/mlruns (found again on resume, by its tag)."""
        if self.mlflow_run is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=(self.folder.parent / "mlruns").resolve().as_uri())
            name, tag = f"timnet {self.cfg.dataset.name}", f"{self.run_id}/{self.unit}"
            experiment_id = _experiment(client, name)
            found = client.search_runs([experiment_id], f"tags.timnet_unit = '{tag}'")
            run = found[0] if found else client.create_run(experiment_id, run_name=tag, tags={"timnet_unit": tag})
            if not found:
                settings = self.cfg.settings().items()
                params = {f"{s}.{k}": str(v)[:500] for s, section in settings for k, v in section.items()}
                client.log_batch(run.info.run_id, params=[_param(k, v) for k, v in params.items()])
            self.mlflow_run = (client, run.info.run_id)
        return _Logger(*self.mlflow_run)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.mlflow_run is not None:
            client, run_id = self.mlflow_run
            client.set_terminated(run_id)


def _after_earlier_event_files(folder: Path) -> None:
    """Wait, at most a second, until a new event file sorts after the earlier ones: TensorBoard reads a folder's
    files in name order (`events.out.tfevents.<second>.<host>.<pid>.<counter>`), and a resumed unit's file that
    sorts first (the same second, a counter of more digits) made its epochs look out of order, so the earlier file
    purged them from the curves."""
    seconds = [
        int(f.name.split(".")[3]) for f in folder.glob("events.out.tfevents.*") if f.name.split(".")[3].isdigit()
    ]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)


def _experiment(client, name: str) -> str:
    """The experiment's id, created if needed (by this process or, at the same moment, another unit's)."""
    for _ in range(2):
        if found := client.get_experiment_by_name(name):
            return found.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:  # noqa: BLE001 — another unit created it first: read it again
            continue
    raise TimnetError(f"MLflow: cannot create or find the experiment {name!r}")


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


class _Logger:
    """log_metrics on one MLflow run through the client (no global active run: units train in parallel)."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_metrics(self, metrics: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
