"""MLflow, through `MlflowClient` alone (the fluent `mlflow.start_run` API keeps a process-global active run, which
a library must not take from the program that imports it).

Where: the server in `MLFLOW_TRACKING_URI` when it is set; otherwise a SQLite store beside the runs,
`<runs>/mlflow.db` (artifacts in `<runs>/mlartifacts`), so one `mlflow ui --backend-store-uri sqlite:///…` shows
every run of a directory, with no server running. SQLite because it is MLflow 3's default and recommended local
store: the `./mlruns` file store is in maintenance mode and MLflow 3.17 refuses to open it unless
`MLFLOW_ALLOW_FILE_STORE=true`.

The run id is saved in trackers.json; a resumed run continues that run (set back to RUNNING) when the store
still has it, and starts a new one when it does not (another store, a deleted run).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPERIMENT = "tunelab"
# How long one call may wait on a tracking server before the tracker gives up (and the run goes on without it):
# about 3 tries over ~5 s when it refuses connections, at most ~40 s when it hangs.
_PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class MLflowTracker:
    """One MLflow run in experiment "tunelab"."""

    name = "mlflow"

    def __init__(self, run_dir: Path, run_name: str, saved: dict[str, Any] | None, resume_step: int | None):
        from mlflow.tracking import MlflowClient

        local_root = Path(run_dir).resolve().parent
        server = os.environ.get("MLFLOW_TRACKING_URI")
        if server:  # MLflow's own defaults (7 retries, exponential backoff, 120 s timeouts) held a run for minutes
            for key, value in _PATIENCE.items():  # on a server that was gone; the user's settings win
                os.environ.setdefault(key, value)
        self.client = MlflowClient(tracking_uri=server or f"sqlite:///{(local_root / 'mlflow.db').as_posix()}")
        self.run_id = self._continue((saved or {}).get("run_id"))
        if self.run_id is None:
            artifacts = None if server else (local_root / "mlartifacts").as_uri()
            run = self.client.create_run(self._experiment(artifacts), run_name=run_name)
            self.run_id = run.info.run_id

    def _continue(self, run_id: str | None) -> str | None:
        if not run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException as e:
            log.info("MLflow has no run %s here (%s); starting a new one", run_id, e.error_code)
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _experiment(self, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(EXPERIMENT, artifact_location=artifact_location)
        except MlflowException:  # another run created it in between
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Values as MLflow stores them (text of at most MAX_PARAM_VAL_LENGTH), batches of at most
        MAX_PARAMS_TAGS_PER_BATCH. A parameter the run already has is left alone: MLflow refuses to change one."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        have = self.client.get_run(self.run_id).data.params
        new = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in
               ((mlflow_key(k), v) for k, v in params.items()) if key not in have]
        for start in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[start:start + MAX_PARAMS_TAGS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(key), value, now, step) for key, value in metrics.items()]
        for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start:start + MAX_METRICS_PER_BATCH])

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")


def mlflow_key(name: str) -> str:
    """A metric or parameter name MLflow accepts: letters, digits, `_ - . / space` (the set every platform
    allows), at most MAX_ENTITY_KEY_LENGTH characters."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    return re.sub(r"[^/\w.\- ]", "_", name)[:MAX_ENTITY_KEY_LENGTH]
