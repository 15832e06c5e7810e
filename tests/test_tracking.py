"""Experiment tracking, read back with each tracker's own reader: TensorBoard's EventAccumulator, MLflow's client on
the local SQLite store, W&B's transaction log through `wandb leet inspect --json`, SwanLab's record log through its
DataStoreReader. Every tracker runs offline, on files under pytest's tmp_path.

One story for each: a run logs steps 1-4, then a checkpoint evaluation at step 2 (after step 4, as the pipeline
does), and closes; `--resume` from the checkpoint at step 2 re-trains steps 3-5 into the same tracked run."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.track import open_trackers
from tunelab.track.base import STATE_FILE

for library in ("tensorboard", "mlflow", "wandb"):
    pytest.importorskip(library, reason=f"the optional `{library}` extra is not installed")
# SwanLab 0.10 needs protobuf < 7 and MindSpore 2.10 (CI's optional extra) protobuf >= 7.34: one environment holds
# only one of them, so requirements-dev.txt leaves SwanLab out and its tests run where it is installed
HAS_SWANLAB = importlib.util.find_spec("swanlab") is not None
needs_swanlab = pytest.mark.skipif(not HAS_SWANLAB, reason="swanlab is not installed (it needs protobuf < 7, "
                                                          "MindSpore 2.10 >= 7.34: `pip install 'tunelab[swanlab]'`)")
# SwanLab 0.10 and MindSpore 2.10 cannot share an environment (protobuf), so CI gives SwanLab one of its own
# (`.ci/run` builds .venv-swanlab) and this file's SwanLab tests run there, from here.
SWANLAB_PYTHON = Path(__file__).resolve().parent.parent / ".venv-swanlab" / "bin" / "python"

PARAMS = {"train.lr": 2e-4, "train.epochs": 3, "model.name": "tiny", "lora.enabled": True, "data.seed": None,
          "data.note": "x" * 7000}  # longer than MLflow keeps
FIRST = {step: 1.0 / step for step in (1, 2, 3, 4)}
RESUMED = {step: 10.0 + step for step in (3, 4, 5)}
EVAL = ("eval/arithmetic/accuracy", 2, 0.75)

# MLflow 3.17's SQL store still configures a loader strategy SQLAlchemy 2.1 deprecates; nothing tunelab can change
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Defaults only (offline, local store) and nothing written outside tmp_path."""
    for name in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_PROJECT", "SWANLAB_MODE", "SWANLAB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "SWANLAB_ROOT"):
        monkeypatch.setenv(name, str(tmp_path / "home" / name.lower()))


def run_story(names: list[str], run_dir: Path) -> tuple[dict, dict]:
    """The module docstring's run; the trackers.json after each attempt."""
    with open_trackers(names, run_dir, "story", PARAMS) as trackers:
        for step, loss in FIRST.items():
            trackers.log_metrics({"train/loss": loss, "train/lr": 1e-4}, step)
        key, step, value = EVAL
        trackers.log_once("checkpoint-2", {key: value}, step)
    first = json.loads((run_dir / STATE_FILE).read_text())
    with open_trackers(names, run_dir, "story", PARAMS, resume_step=2) as trackers:
        for step, loss in RESUMED.items():
            trackers.log_metrics({"train/loss": loss}, step)
        trackers.log_once("checkpoint-2", {key: value}, step)  # cached evaluation offered again: not re-sent
    return first, json.loads((run_dir / STATE_FILE).read_text())


# ---- the trackers' own readers ---------------------------------------------------------------------------------

def tensorboard_reader(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    reader.Reload()
    return reader


def tensorboard_hparams(reader) -> dict:
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    data = HParamsPluginData.FromString(reader.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    return {key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
            for key, value in data.session_start_info.hparams.items()}


def mlflow_client(run_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{(run_dir.parent / 'mlflow.db').as_posix()}")


def wandb_logs(run_dir: Path) -> list[list[dict]]:
    """Each attempt's transaction log (`offline-run-…/run-<id>.wandb`), oldest first, as W&B's inspector prints it."""
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    return [[json.loads(line) for line in subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
        capture_output=True, text=True, check=True).stdout.splitlines()] for path in files]


def wandb_history(log: list[dict]) -> list[dict]:
    return [record["history"]["item"] for record in log if record["type"] == "history"]


def swanlab_logs(run_dir: Path) -> list[list]:
    """Each attempt's record log (`run-…/run-<id>.swanlab`), oldest first, as SwanLab's sync reads it."""
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    logs = []
    for path in sorted((run_dir / "swanlab").glob("run-*/run-*.swanlab")):
        reader = DataStoreReader()
        reader.open(path)
        logs.append([Record.FromString(data) for data in reader])
        reader.close()
    return logs


def swanlab_records(log: list, kind: str) -> list:
    return [getattr(record, kind) for record in log if record.WhichOneof("record_type") == kind]


def swanlab_scalars(log: list) -> list[tuple[str, int, float]]:
    return [(scalar.key, scalar.step, scalar.value.number) for scalar in swanlab_records(log, "scalar")]


# ---- each tracker --------------------------------------------------------------------------------------------

def test_tensorboard_purges_retrained_steps(tmp_path):
    first, second = run_story(["tensorboard"], tmp_path / "run")
    assert first["tensorboard"] == second["tensorboard"] == {}
    reader = tensorboard_reader(tmp_path / "run")
    loss = {e.step: e.value for e in reader.Scalars("train/loss")}
    assert loss == pytest.approx({1: 1.0, 2: 0.5, 3: 13.0, 4: 14.0, 5: 15.0})  # 3-4 of the first attempt purged
    assert [e.step for e in reader.Scalars("train/loss")] == [1, 2, 3, 4, 5]
    assert [(e.step, e.value) for e in reader.Scalars(EVAL[0])] == [EVAL[1:]]
    assert [e.step for e in reader.Scalars("train/lr")] == [1, 2]
    hparams = tensorboard_hparams(reader)
    assert hparams["train.lr"] == pytest.approx(2e-4) and hparams["train.epochs"] == 3
    assert hparams["model.name"] == "tiny" and hparams["lora.enabled"] == "True" and hparams["data.seed"] == "None"


def test_mlflow_local_store_continues_the_run(tmp_path):
    first, second = run_story(["mlflow"], tmp_path / "run")
    run_id = first["mlflow"]["run_id"]
    assert second["mlflow"]["run_id"] == run_id
    client = mlflow_client(tmp_path / "run")
    assert [r.info.run_id for r in client.search_runs([client.get_experiment_by_name("tunelab").experiment_id])] \
        == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "story"
    params = run.data.params
    assert params["train.lr"] == "0.0002" and params["lora.enabled"] == "True" and params["data.seed"] == "None"
    assert params["data.note"] == "x" * 6000
    loss = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    # MLflow keeps every point: the interrupted attempt's steps 3-4 stay beside the re-trained ones
    assert loss == sorted([*FIRST.items(), *RESUMED.items()])
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, EVAL[0])] == [EVAL[1:]]


def test_mlflow_tracking_uri_from_the_environment(tmp_path, monkeypatch):
    uri = f"sqlite:///{(tmp_path / 'elsewhere.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with open_trackers(["mlflow"], tmp_path / "run", "story") as trackers:
        trackers.log_metrics({"train/loss": 2.5}, 7)
    from mlflow.tracking import MlflowClient

    run_id = json.loads((tmp_path / "run" / STATE_FILE).read_text())["mlflow"]["run_id"]
    assert [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, "train/loss")] == [(7, 2.5)]
    assert not (tmp_path / "mlflow.db").exists()


def test_wandb_offline_out_of_order_steps_and_resume(tmp_path):
    first, second = run_story(["wandb"], tmp_path / "run")
    run_id = first["wandb"]["run_id"]
    assert second["wandb"]["run_id"] == run_id
    logs = wandb_logs(tmp_path / "run")
    assert len(logs) == 2  # offline, the resumed attempt is a second log of the same run id
    runs = [next(r["run"] for r in log if r["type"] == "run") for log in logs]
    assert [r["run_id"] for r in runs] == [run_id, run_id] and runs[0]["display_name"] == "story"
    config = {key: value for r in logs[0] if r["type"] == "config" for key, value in r["config"]["update"].items()}
    assert config["train.lr"] == pytest.approx(2e-4) and config["model.name"] == "tiny"
    for log in logs:  # every metric against train/step, in each attempt
        globs = [r["metric"] for r in log if r["type"] == "metric" and r["metric"].get("glob_name") == "*"]
        assert [glob["step_metric"] for glob in globs] == ["train/step"]
    first_items, resumed_items = (wandb_history(log) for log in logs)
    assert [(i["train/step"], i["train/loss"]) for i in first_items if "train/loss" in i] == list(FIRST.items())
    # the checkpoint's evaluation, logged after step 4, stands at step 2 on the train/step axis
    assert [(i["train/step"], i[EVAL[0]]) for i in first_items if EVAL[0] in i] == [EVAL[1:]]
    assert [(i["train/step"], i["train/loss"]) for i in resumed_items] == list(RESUMED.items())
    assert [r["exit"]["exit_code"] for log in logs for r in log if r["type"] == "exit"] == [0, 0]


@needs_swanlab
def test_swanlab_offline_out_of_order_steps_and_resume(tmp_path):
    import yaml
    from swanlab.proto.swanlab.run.v1.run_pb2 import RunState

    first, second = run_story(["swanlab"], tmp_path / "run")
    run_id = first["swanlab"]["run_id"]
    assert second["swanlab"]["run_id"] == run_id
    logs = swanlab_logs(tmp_path / "run")
    assert len(logs) == 2
    starts = [swanlab_records(log, "start")[0] for log in logs]
    assert [s.id for s in starts] == [run_id, run_id] and starts[0].name == "story"
    scalars = swanlab_scalars(logs[0])
    assert [(step, value) for key, step, value in scalars if key == "train/loss"] == list(FIRST.items())
    assert [(step, value) for key, step, value in scalars if key == EVAL[0]] == [EVAL[1:]]
    assert scalars.index(("train/loss", 4, FIRST[4])) < scalars.index((EVAL[0], *EVAL[1:]))
    assert [(step, value) for key, step, value in swanlab_scalars(logs[1])] == list(RESUMED.items())
    saved = [save.source_path for save in swanlab_records(logs[0], "save") if save.name == "config"]
    config = yaml.safe_load(Path(saved[-1]).read_text())
    assert config["train.lr"]["value"] == pytest.approx(2e-4) and config["model.name"]["value"] == "tiny"
    assert [finish.state for log in logs for finish in swanlab_records(log, "finish")] \
        == [RunState.RUN_STATE_FINISHED] * 2


# ---- the fan-out ---------------------------------------------------------------------------------------------

def test_a_failing_tracker_warns_once_and_the_others_go_on(tmp_path, caplog, monkeypatch):
    run_dir = tmp_path / "run"
    trackers = open_trackers(["tensorboard", "mlflow", "wandb"] + (["swanlab"] if HAS_SWANLAB else []), run_dir,
                             "story", PARAMS)
    trackers.log_metrics({"train/loss": 1.0}, 1)
    mlflow = next(t for t in trackers.trackers if t.name == "mlflow")

    def server_gone(*args, **kwargs):
        raise ConnectionError("Connection refused\nsecond line")
    monkeypatch.setattr(mlflow.client, "log_batch", server_gone)
    with caplog.at_level(logging.WARNING, logger="tunelab.track"):
        for step in (2, 3):
            trackers.log_metrics({"train/loss": 1.0 / step}, step)
        trackers.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["tracker mlflow failed to log metrics (ConnectionError: Connection refused); "
                        "it is off for the rest of this run"]
    run_id = json.loads((run_dir / STATE_FILE).read_text())["mlflow"]["run_id"]
    assert [m.step for m in mlflow_client(run_dir).get_metric_history(run_id, "train/loss")] == [1]
    assert [e.step for e in tensorboard_reader(run_dir).Scalars("train/loss")] == [1, 2, 3]
    assert [i["train/step"] for i in wandb_history(wandb_logs(run_dir)[0])] == [1, 2, 3]
    if HAS_SWANLAB:
        assert [step for _, step, _ in swanlab_scalars(swanlab_logs(run_dir)[0])] == [1, 2, 3]


def test_a_missing_library_names_the_extra(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(TunelabError, match=r"pip install 'tunelab\[wandb\]'") as raised:
        open_trackers(["tensorboard", "wandb"], tmp_path / "run", "story", PARAMS)
    assert raised.value.field == "report_to"
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_an_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(TunelabError, match="unknown tracker 'comet'"):
        open_trackers(["comet"], tmp_path / "run", "story")


# ---- a real `tunelab run` ---------------------------------------------------------------------------------------

def test_a_run_reports_steps_checkpoints_and_its_score(tmp_path, tiny_base, capsys):
    """`tunelab run --report-to tensorboard,mlflow` on a tiny LoRA run: every metrics line's loss, lr, gradient
    norm, tokens/s, MFU and memory at its step; each checkpoint's task metrics and the score it would get at its
    step, the base at step 0; retention, ratio and score at the best checkpoint's step; the recipe as
    hyperparameters. `--resume` of the finished run continues the same MLflow run and sends nothing twice."""
    from conftest import lora_sections, write_recipe

    from tunelab.cli import main
    tasks = [{"task": "arithmetic", "source": {"generate": "arithmetic", "count": 8, "seed": 9,
                                               "options": {"kinds": ["int_mul"], "int_digits": 2}}},
             {"task": "reading", "source": {"generate": "reading", "count": 6, "seed": 8}, "ability": True}]
    path = write_recipe(tmp_path, "tracked", eval={"tasks": tasks, "max_new_tokens": 8, "baseline": True},
                        score={"formula": "stage1", "total_params": 8.03e9},
                        **lora_sections(tiny_base, max_steps=6, num_checkpoints=2, log_every=2))
    assert main(["run", str(path), "--report-to", "tensorboard,mlflow"]) == 0
    run_dir = tmp_path / "runs" / "tracked"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    reader = tensorboard_reader(run_dir)
    loss = {e.step: e.value for e in reader.Scalars("train/loss")}
    assert loss == pytest.approx({r["step"]: r["loss"] for r in lines})
    for name in ("train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu", "train/memory_gib"):
        assert [e.step for e in reader.Scalars(name)] == [2, 4, 6], name
    assert all(e.value > 0 for e in reader.Scalars("train/memory_gib"))
    accuracy = {e.step: e.value for e in reader.Scalars("eval/arithmetic/accuracy")}
    assert accuracy == pytest.approx({0: metrics["base"]["arithmetic"]["accuracy"],
                                      **{int(n.split("-")[1]): r["arithmetic"]["accuracy"]
                                         for n, r in metrics["checkpoints"].items()}})
    assert {e.step: e.value for e in reader.Scalars("eval/score")} == pytest.approx(
        {int(n.split("-")[1]): v for n, v in metrics["checkpoint_scores"].items()})
    best = int(metrics["best_checkpoint"].split("-")[1])
    assert [(e.step, e.value) for e in reader.Scalars("score/value")] == [(best, pytest.approx(metrics["score"]["value"]))]
    if metrics["retention"]["reading.f1"]["retained"] is not None:  # a tiny base near zero: nothing judged, no tag
        assert reader.Scalars("retention/reading.f1/pass")[0].value in (0.0, 1.0)
    else:
        assert "retention/reading.f1/pass" not in reader.Tags()["scalars"]
    hparams = tensorboard_hparams(reader)
    assert hparams["name"] == "tracked" and hparams["lora.rank"] == 4 and "env.torch" in hparams

    client = mlflow_client(run_dir)
    (run,) = client.search_runs([client.get_experiment_by_name("tunelab").experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "6"
    history = client.get_metric_history(run.info.run_id, "eval/score")
    assert sorted(m.step for m in history) == sorted(int(n.split("-")[1]) for n in metrics["checkpoint_scores"])

    assert main(["run", str(path), "--resume", "--report-to", "tensorboard,mlflow"]) == 0
    runs = client.search_runs([client.get_experiment_by_name("tunelab").experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # the same tracked run, continued
    assert len(client.get_metric_history(run.info.run_id, "eval/score")) == len(history)  # nothing sent twice
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == len(lines)


def test_a_tracker_that_is_not_installed_stops_the_run_before_it_starts(tmp_path, tiny_base, monkeypatch, capsys):
    from conftest import lora_sections, write_recipe

    from tunelab.cli import main
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    path = write_recipe(tmp_path, "untracked", **lora_sections(tiny_base, max_steps=2))
    assert main(["train", str(path), "--report-to", "wandb"]) == 2
    assert "pip install 'tunelab[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "untracked").exists()


def test_a_tracking_server_that_is_gone_costs_seconds_not_minutes(tmp_path, caplog, monkeypatch):
    """A real MLflow client against a port nobody listens on: the tracker gives up after a few quick retries
    (MLflow's own defaults retried for minutes) and the run goes on with the others."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    patience = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    for key in patience:  # MLflow's own defaults, as a user who set none has them (restored after the test)
        monkeypatch.delenv(key, raising=False)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="tunelab.track"):
            trackers = open_trackers(["tensorboard", "mlflow"], tmp_path / "run", "story", PARAMS)
            running = [t.name for t in trackers.trackers]
            trackers.log_metrics({"train/loss": 1.0}, 1)
            trackers.close()
    finally:
        for key in patience:  # what the tracker set for this process
            os.environ.pop(key, None)
    assert time.monotonic() - started < 30
    assert running == ["tensorboard"]
    assert any("tracker mlflow could not start" in r.getMessage() for r in caplog.records)
    assert [e.step for e in tensorboard_reader(tmp_path / "run").Scalars("train/loss")] == [1]


@pytest.mark.skipif(HAS_SWANLAB or not SWANLAB_PYTHON.is_file(),
                    reason="SwanLab is installed here (its tests ran above), or there is no .venv-swanlab")
def test_swanlab_in_an_interpreter_of_its_own():
    """This file's SwanLab tests, in the interpreter that has SwanLab: they must run there, not skip."""
    r = subprocess.run([str(SWANLAB_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                        "swanlab_offline or failing_tracker_warns_once", "-rs"],
                       capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
