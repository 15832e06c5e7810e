"""`tunelab sweep`: the space file, real tiny trials through `tunelab run`, resuming after SIGKILL mid-trial without
losing or repeating a finished trial, extending a finished sweep, the retention constraint, pruning, and two
worker processes sharing one study.

The trials are real runs of a micro Llama from scratch (a few seconds each); the retention and pruning tests
script the run's outcome instead (`tunelab.pipeline.run` replaced), since a real tiny run cannot be made to fail
retention while scoring highest on purpose."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import lora_sections, write_recipe
from optuna.trial import TrialState

from tunelab.errors import TunelabError
from tunelab.recipe import load_recipe, read_recipe_raw
from tunelab.runs import list_checkpoints
from tunelab.sweep import SweepSettings, sweep
from tunelab.sweep.space import load_space

EVAL = {"baseline": False, "batch_size": 16, "max_new_tokens": 8,
        "tasks": [{"task": "arithmetic", "source": {"generate": "arithmetic", "count": 12, "seed": 9,
                                                    "options": {"kinds": ["int_add"], "int_digits": 1}}}]}


def tiny_recipe(tmp_path: Path, steps: int = 6) -> Path:
    return write_recipe(tmp_path, "tiny", data={"train": [{"generate": "arithmetic", "count": 200, "seed": 1,
                                                            "options": {"kinds": ["int_add"], "int_digits": 1}}]},
                        train={"max_steps": steps, "num_checkpoints": 3, "log_every": 2}, eval=EVAL, report_to=[])


def lora_recipe(tmp_path: Path, base: Path) -> Path:
    """LoRA on the session's tiny trained base, with its reading ability checked: trials with a real baseline
    and a real retention verdict."""
    sections = lora_sections(base, max_steps=6, num_checkpoints=3, log_every=2)
    tasks = [{"task": "arithmetic", "source": {"generate": "arithmetic", "count": 12, "seed": 9,
                                               "options": {"kinds": ["int_mul"], "int_digits": 2}}},
             {"task": "reading", "source": {"generate": "reading", "count": 8, "seed": 8}, "ability": True}]
    return write_recipe(tmp_path, "tiny", **sections, report_to=[],
                        eval={"baseline": True, "batch_size": 16, "max_new_tokens": 8, "tasks": tasks})


def write_space(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


SPACE = "train.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\ntrain.batch_size: [2, 4]\n"


def study_of(sweep_dir: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'study.db'}")


# --- the space -----------------------------------------------------------------------------------

def test_space_reads_choices_ranges_and_list_choices(tmp_path):
    recipe = tiny_recipe(tmp_path)
    raw, _ = read_recipe_raw(recipe)
    space = load_space(write_space(tmp_path, (
        "train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "train.batch_size: [2, 4]\n"
        "data.train.0.count: {low: 100, high: 300, step: 100}\n"
        "train.warmup_ratio: {low: 0.0, high: 0.2, step: 0.05}\n"
        "data.train.0.options.kinds: {choices: [[int_add], [int_add, int_sub]]}\n")), raw, recipe)
    dims = {d.field: d for d in space.dimensions}
    assert dims["train.lr"].log and not dims["train.lr"].integer
    assert dims["data.train.0.count"].integer and not dims["train.warmup_ratio"].integer
    fixed = optuna.trial.FixedTrial({"train.lr": 2e-3, "train.batch_size": 4, "data.train.0.count": 200,
                                     "train.warmup_ratio": 0.05, "data.train.0.options.kinds": "[int_add, int_sub]"})
    values = space.suggest(fixed)
    assert values["data.train.0.options.kinds"] == ["int_add", "int_sub"]  # a list choice comes back as a list
    assert values["data.train.0.count"] == 200 and values["train.lr"] == 2e-3
    # the recipe's own values as parameters: in the space, or None when one is outside it
    assert space.params_of(raw) == {"train.lr": 3e-3, "train.batch_size": 4, "data.train.0.count": 200,
                                    "train.warmup_ratio": 0.1, "data.train.0.options.kinds": "[int_add]"}
    raw["train"]["batch_size"] = 3
    assert space.params_of(raw) is None


@pytest.mark.parametrize("text, line, says", [
    ("train.lr: [0.001]\ntrain.lrr: [1, 2]\n", 2, "train.lrr = 1 does not give a valid recipe"),
    ("train.batch_size: [2, 0]\n", 1, "train.batch_size = 0 does not give a valid recipe"),
    ("train.lr: {low: 0.0, high: 0.1, log: true}\n", 1, "a log range needs low > 0"),
    ("train.lr: {low: 0.1, high: 0.01}\n", 1, "low (0.1) must be below high (0.01)"),
    ("train.lr: {low: 0.1}\n", 1, "a range needs both low and high"),
    ("train.lr: {choices: []}\n", 1, "choices is a non-empty list"),
    ("train.lr: {low: 1, high: 2, lo: 3}\n", 1, "unknown setting lo"),
    ("train.lr: 0.1\n", 1, "expects choices"),
    ("train.lr: [0.1, 0.1]\n", 1, "a choice is listed twice"),
])
def test_space_mistakes_name_the_line_and_field(tmp_path, text, line, says):
    recipe = tiny_recipe(tmp_path)
    raw, _ = read_recipe_raw(recipe)
    path = write_space(tmp_path, text)
    with pytest.raises(TunelabError) as e:
        load_space(path, raw, recipe)
    assert e.value.file == str(path) and e.value.line == line and says in e.value.message


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from tunelab.cli import main
    recipe = tiny_recipe(tmp_path)
    space = write_space(tmp_path, SPACE)
    monkeypatch.chdir(tmp_path)
    for extra, says in ((["--objective", "nope"], "--objective: expects score, val_loss or <task>/<metric>"),
                        (["--objective", "val_loss"], "--objective: the objective val_loss is a pretraining"),
                        (["--devices", "0,x"], "--devices: expects GPU indices")):
        capsys.readouterr()
        assert main(["sweep", str(recipe), "--space", str(space), "--trials", "2", *extra]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert says in err.strip().splitlines()[-1], err


# --- real trials -----------------------------------------------------------------------------------

def test_sweep_runs_real_trials_writes_results_and_extends(tmp_path, tiny_base):
    recipe = lora_recipe(tmp_path, tiny_base)
    space = "train.lr: {low: 1.0e-3, high: 2.0e-2, log: true}\nlora.rank: [2, 4]\n"
    settings = SweepSettings(str(recipe), str(write_space(tmp_path, space)), trials=3)
    results = sweep(settings)
    sweep_dir = tmp_path / "runs" / "tiny-sweep"
    study = study_of(sweep_dir)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    # the first trial is the recipe as written, and it is marked as such
    assert trials[0].params == {"train.lr": 1e-2, "lora.rank": 4} and trials[0].user_attrs["baseline"]
    base_results = (sweep_dir / "trial-000" / "eval" / "base" / "results.json").read_bytes()
    for t in trials:  # each trial is a whole run of its own under the sweep, recorded with its outcome
        run_dir = sweep_dir / t.user_attrs["run"]
        saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
        assert saved["train"]["lr"] == pytest.approx(t.params["train.lr"])
        assert saved["lora"]["rank"] == t.params["lora.rank"]
        # the base was evaluated once, by the first trial; the others took its results
        assert (run_dir / "eval" / "base" / "results.json").read_bytes() == base_results
        if t.state == TrialState.COMPLETE:
            metrics = yaml.safe_load((run_dir / "metrics.json").read_text())
            assert t.value == metrics["score"]["value"] == t.user_attrs["score"]
            assert t.intermediate_values[3] == metrics["checkpoint_scores"]["step-000006"]
            judged = [v["retained"] for v in metrics["retention"].values() if v["retained"] is not None]
            shortfall = max((0.9 - r for r in judged), default=0.0)
            assert t.constraints == {"retention": pytest.approx(shortfall)}
            from tunelab.eval.retention import overall
            assert t.user_attrs["retention"] == overall(metrics["retention"])
    feasible = [t for t in trials if t.state == TrialState.COMPLETE and t.constraints["retention"] <= 0]
    if feasible:
        assert results.best.value == max(t.value for t in feasible)
    for name in ("trials.csv", "history.png", "curves.png", "score_vs_ratio.png"):
        assert (sweep_dir / name).stat().st_size > 0
    if feasible:
        best = load_recipe(sweep_dir / "best.yaml")  # ready for `tunelab run`, with the best trial's values
        assert best.name == "tiny-best" and best.train.lr == pytest.approx(results.best.params["train.lr"])
        assert best.output_dir == str(tmp_path / "runs") and best.lora.rank == results.best.params["lora.rank"]

    # the same number of trials again: nothing to do; a larger one extends the sweep by the difference
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("trial-*/metrics.json")}
    sweep(settings)
    assert len(study_of(sweep_dir).get_trials()) == 3
    sweep(SweepSettings(str(recipe), settings.space, trials=4))
    trials = study_of(sweep_dir).get_trials()
    assert len(trials) == 4 and trials[3].user_attrs["run"] == "trial-003"
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished trials are never run again


def test_a_sigkilled_sweep_resumes_without_losing_or_repeating_a_trial(tmp_path):
    recipe = tiny_recipe(tmp_path, steps=45)
    space = write_space(tmp_path, SPACE)
    sweep_dir = tmp_path / "runs" / "tiny-sweep"
    cmd = [sys.executable, "-m", "tunelab.cli", "sweep", str(recipe), "--space", str(space), "--trials", "3",
           "--no-prune"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not list_checkpoints(sweep_dir / "trial-001") if (sweep_dir / "trial-001").exists() else True:
            assert time.time() < deadline and proc.poll() is None, "trial 1 never wrote a checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # mid-trial: trial 1 has a checkpoint and is still training
    finally:
        proc.kill()
        proc.wait()
    first = sweep_dir / "trial-000" / "metrics.json"
    stamp = first.stat().st_mtime_ns
    killed = study_of(sweep_dir).get_trials()
    assert [t.state for t in killed] == [TrialState.COMPLETE, TrialState.RUNNING]
    written = [c.name for c in list_checkpoints(sweep_dir / "trial-001")]
    assert written and written[-1] != "step-000045"

    sweep(SweepSettings(str(recipe), str(space), trials=3, prune=False))
    trials = study_of(sweep_dir).get_trials()
    # trial 1 died; it was put back in the queue as itself and resumed its run; trial 0 was not run again
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.user_attrs["run"] for t in trials] == ["trial-000", "trial-001", "trial-002"]
    assert trials[1].params == killed[1].params and trials[1].user_attrs["stops"] == ["its process died"]
    assert first.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in sweep_dir.glob("trial-*")) == ["trial-000", "trial-001", "trial-002"]
    steps = [yaml.safe_load(line)["step"] for line in (sweep_dir / "trial-001" / "metrics.jsonl").open()
             if '"loss"' in line]
    assert steps == sorted(set(steps)) and steps[-1] == 45  # one line per logged step: resumed, not restarted
    summary = yaml.safe_load((sweep_dir / "trial-001" / "train_summary.json").read_text())
    assert summary["steps"] == 45
    rows = (sweep_dir / "trials.csv").read_text().splitlines()[1:]
    assert [row.split(",")[:3] for row in rows] == [["0", "trial-000", "complete"], ["1", "trial-001", "complete"],
                                                    ["2", "trial-002", "complete"]]
    assert rows[1].endswith(",resumed after: its process died")


ROOT = Path(__file__).resolve().parent.parent


def cpu_path_commands() -> list[list[str]]:
    """The `tunelab` commands of docs/sweep.md's short CPU path, in order (argv after `tunelab`)."""
    import re
    import shlex
    text = (ROOT / "docs" / "sweep.md").read_text(encoding="utf-8")
    section = text.split("## A short CPU path", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(line)[1:] for block in re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)
            for line in block.splitlines() if line.startswith("tunelab ")]


def test_the_docs_cpu_path_stops_on_sigterm_in_one_line_and_resumes(tmp_path, monkeypatch, capsys):
    """docs/sweep.md's short CPU path as a user runs it, SIGTERM while trial 1 trains: exit 75 and one line naming
    the command that continues; that command resumes trial 1 under its number and folder, the table has one row
    per trial saying how it stopped, and the runs' table gives the resumed run the time of both its processes."""
    from tunelab.compare import _duration
    commands = cpu_path_commands()
    assert [c[:2] for c in commands] == [["sweep", "recipes/sweep-cpu.yaml"]] * 2 + [["runs", "table"]]
    assert commands[0] == commands[1]
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    tunelab = [sys.executable, "-m", "tunelab.cli"]
    sweep_dir = tmp_path / "runs" / "sweep-cpu-sweep"
    proc = subprocess.Popen([*tunelab, *commands[0]], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 300
        while not ((sweep_dir / "trial-001").exists() and list_checkpoints(sweep_dir / "trial-001")):
            assert time.time() < deadline and proc.poll() is None, "trial 1 never wrote a checkpoint"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    stopped = list_checkpoints(sweep_dir / "trial-001")[-1]
    step = int(stopped.name.split("-")[1])
    assert proc.returncode == 75 and out == ""
    assert err.endswith("\n") and err.splitlines()[-1] == (
        f"tunelab: stopped: {sweep_dir / 'trial-001'}: SIGTERM received: stopped after step {step} of 30, checkpoint "
        f"{stopped.name} is written; continue with: tunelab {' '.join(commands[0])}")
    assert "Traceback" not in err and "[W " not in err and err.count("SIGTERM") == 1  # Optuna says nothing
    first = [json.loads(line) for line in (sweep_dir / "trial-001" / "metrics.jsonl").open()]
    stopped_at = max(r["elapsed_s"] for r in first)  # the first process's training time

    from tunelab.cli import main
    monkeypatch.chdir(tmp_path)  # the rest in this process: one start-up of torch and Optuna fewer
    capsys.readouterr()
    assert main(commands[1]) == 0
    resumed = capsys.readouterr()
    assert sorted(p.name for p in sweep_dir.glob("trial-*")) == ["trial-000", "trial-001", "trial-002"]
    table = resumed.out.split("\nbest: ")[0].splitlines()
    assert [line.split()[:2] for line in table[2:]] == [["0", "trial-000"], ["1", "trial-001"], ["2", "trial-002"]]
    import csv
    with (sweep_dir / "trials.csv").open(encoding="utf-8") as f:
        trials = [(r["trial"], r["state"], r["note"]) for r in csv.DictReader(f)]  # the table's rows, unaligned
    preempted = f"preempted: SIGTERM received: stopped after step {step} of 30, checkpoint {stopped.name} is written"
    assert trials[:2] == [("0", "complete", "the recipe's own values"), ("1", "complete", f"resumed after: {preempted}")]
    assert trials[2] == ("2", "complete", "") or trials[2][1:] == ("pruned", "pruned at step-000030")
    assert table[3].endswith(f"  resumed after: {preempted}")
    lines = [json.loads(line) for line in (sweep_dir / "trial-001" / "metrics.jsonl").open()]
    after = [r for r in lines if r["step"] > step]
    assert after and after[0]["elapsed_s"] > stopped_at  # the second process's clock went on from the first's
    seconds = json.loads((sweep_dir / "trial-001" / "metrics.json").read_text())["train"]["train_seconds"]
    assert seconds >= after[-1]["elapsed_s"]
    assert main(commands[2]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("trial-001 "))
    assert row[-1] == _duration(seconds)


def test_a_resumed_run_counts_the_time_a_killed_process_trained_past_its_checkpoint(tmp_path):
    """A process killed between checkpoints trained steps the resumed run trains again: its time was spent on
    the run all the same, and the run's train_seconds (the runs table's wall time) is the sum of its processes'."""
    from tunelab.train.loop import train
    recipe = load_recipe(tiny_recipe(tmp_path))

    class Killed(Exception):
        pass

    def killed_after_step_4(path, info):
        if info["index"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train(recipe, on_checkpoint=killed_after_step_4)
    metrics = recipe.run_dir / "metrics.jsonl"
    with metrics.open("a") as f:  # what it logged before it died: step 5, 100 s into the run
        f.write(json.dumps({"step": 5, "loss": 1.0, "elapsed_s": 100.0}) + "\n")
    started = time.perf_counter()
    summary = train(recipe, resume=True)
    wall = time.perf_counter() - started  # the resumed process's own time: the baseline, whatever the host
    lines = [json.loads(line) for line in metrics.open()]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4, 6]  # step 5's line is dropped, the steps recomputed
    assert lines[-1]["elapsed_s"] > 100 and summary["train_seconds"] > 100
    assert summary["train_seconds"] < 100 + wall


def test_the_table_has_one_row_per_trial_saying_how_it_stopped(tmp_path):
    """Trials as a sweep leaves them: one Optuna's heartbeat retried under a new number (its run, one row), one
    stopped and not yet resumed, one failed, one diverged."""
    from optuna.distributions import FloatDistribution
    from tunelab.sweep.results import format_results, read_results
    recipe = tiny_recipe(tmp_path)
    raw, _ = read_recipe_raw(recipe)
    space = load_space(write_space(tmp_path, "train.lr: {low: 1.0e-3, high: 1.0e-2}\n"), raw, recipe)
    study = optuna.create_study(direction="maximize")
    lr = {"train.lr": 0.005}, {"train.lr": FloatDistribution(1e-3, 1e-2)}

    def add(state, value=None, **attrs):
        study.add_trial(optuna.trial.create_trial(state=state, value=value, params=lr[0], distributions=lr[1],
                                                  user_attrs=attrs))
    add(TrialState.FAIL, run="trial-000", stops=["preempted: SIGTERM received"])  # its machine was lost later
    add(TrialState.WAITING, run="trial-001", stops=["interrupted (Ctrl-C)"])
    add(TrialState.FAIL, run="trial-002", error="failed: trial-002: the data ran out")
    add(TrialState.FAIL, run="trial-003", error="diverged: loss became nan at step 3")
    add(TrialState.COMPLETE, 0.5, run="trial-000", stops=["preempted: SIGTERM received"], score=0.5)
    results = read_results(study, space)
    assert [row[:3] for row in results.rows] == [[0, "trial-000", "complete"], [1, "trial-001", "stopped"],
                                                 [2, "trial-002", "fail"], [3, "trial-003", "fail"]]
    assert [row[-1] for row in results.rows] == [
        "resumed after: preempted: SIGTERM received; its process died",
        "interrupted (Ctrl-C); resumes when the sweep runs again",
        "failed: trial-002: the data ran out", "diverged: loss became nan at step 3"]
    assert len(format_results(results).splitlines()) == 2 + 4


@pytest.mark.parametrize("workers", [{"workers": 2}, {"devices": ["0", "1"]}], ids=["workers", "devices"])
def test_two_workers_share_one_study(tmp_path, workers):
    """Two worker processes on this CPU, or one per "GPU" (the recipe trains on the CPU; each worker is given
    its device as CUDA_VISIBLE_DEVICES, as it would be on a GPU machine)."""
    recipe = tiny_recipe(tmp_path)
    space = write_space(tmp_path, SPACE)
    results = sweep(SweepSettings(str(recipe), str(space), trials=4, overrides=["train.device=cpu"], **workers))
    sweep_dir = tmp_path / "runs" / "tiny-sweep"
    trials = study_of(sweep_dir).get_trials()
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    assert sorted(t.user_attrs["run"] for t in trials) == [f"trial-00{i}" for i in range(4)]
    logs = [(sweep_dir / f"worker-{i}.log").read_text() for i in range(2)]
    assert all("trial " in log for log in logs), logs  # each worker ran trials of the one study
    if "devices" in workers:
        assert [f"worker {i}, PID" in logs[i] and f", GPU {i}" in logs[i] for i in range(2)] == [True, True]
    assert results.best is not None


# --- scripted outcomes: the constraint and pruning -------------------------------------------------

@pytest.fixture
def optuna_said():
    """The records Optuna's loggers pass on to its stderr handler during the test."""
    import logging
    said: list = []
    handler = logging.Handler()
    handler.emit = said.append
    logging.getLogger("optuna").addHandler(handler)
    yield said
    logging.getLogger("optuna").removeHandler(handler)


def scripted_run(outcomes: dict, seen: list):
    """A stand-in for `tunelab.pipeline.run`: each trial's run reports `outcomes[run name]` =
    (per-checkpoint accuracies, retained fraction) through `on_checkpoint`, then returns its metrics (the best
    accuracy as the score, for short)."""
    from tunelab.pipeline import WrittenCheckpoint

    def run(recipe, resume=False, on_checkpoint=None):
        scores, retained = outcomes[recipe.name]
        seen.append(recipe.name)
        for i, score in enumerate(scores, start=1):
            if on_checkpoint:
                on_checkpoint(WrittenCheckpoint(
                    path=recipe.run_dir / "checkpoints" / f"step-{i:06d}", step=i, index=i, val_loss=None,
                    trainable_params=10, total_params=1000,
                    evaluate=lambda s=score: {"arithmetic": {"accuracy": s}}))
        best = max(range(len(scores)), key=lambda i: scores[i])
        return {"score": {"value": scores[best], "accuracy": scores[best]}, "ratio": {"ratio": 0.01},
                "best_checkpoint": f"step-{best + 1:06d}",
                "retention": {"reading.f1": {"base": 50.0, "tuned": 50.0 * retained, "retained": retained,
                                             "pass": retained >= 0.9}}}
    return run


def test_a_trial_that_fails_retention_never_wins(tmp_path, monkeypatch):
    import tunelab.pipeline
    outcomes = {"trial-000": ([0.50], 0.97), "trial-001": ([0.99], 0.60), "trial-002": ([0.70], 0.95)}
    seen: list = []
    monkeypatch.setattr(tunelab.pipeline, "run", scripted_run(outcomes, seen))
    recipe = tiny_recipe(tmp_path)
    space = write_space(tmp_path, "train.lr: [0.001, 0.002, 0.003, 0.004, 0.005]\n")
    results = sweep(SweepSettings(str(recipe), str(space), trials=3, prune=False))
    assert seen == ["trial-000", "trial-001", "trial-002"]
    trials = study_of(tmp_path / "runs" / "tiny-sweep").get_trials()
    assert [t.value for t in trials] == [0.50, 0.99, 0.70]
    assert trials[1].user_attrs["retention"] == "FAIL" and trials[1].constraints == {"retention": pytest.approx(0.3)}
    assert trials[2].constraints == {"retention": pytest.approx(0.9 - 0.95)}
    assert results.best.number == 2  # not trial 1: the highest score, but it lost 40 % of the reading ability
    table = {row[0]: row for row in results.rows}
    assert table[1][2] == "infeasible" and table[2][2] == "complete"
    best = load_recipe(tmp_path / "runs" / "tiny-sweep" / "best.yaml")
    assert best.train.lr == trials[2].params["train.lr"]


def test_a_space_of_choices_runs_as_a_grid_each_combination_once(tmp_path, monkeypatch, caplog):
    """Six adapter-like combinations: TPE would draw one twice and leave another out; the grid runs each once,
    across a resume too (the grid's order must not move with the trials already run: once it did, and a resumed
    adapter grid ran LoRA r4 twice), stops at its size whatever --trials says, and an invocation after the last
    finds nothing left to run."""
    import tunelab.pipeline
    outcomes = {f"trial-{i:03d}": ([0.1 * (i + 1)], 1.0) for i in range(8)}
    seen: list = []
    monkeypatch.setattr(tunelab.pipeline, "run", scripted_run(outcomes, seen))
    recipe = tiny_recipe(tmp_path)  # a grid enqueues no baseline: the recipe's own values are one of its points
    space = write_space(tmp_path, "train.lr: [0.001, 0.002, 0.003]\ntrain.batch_size: [2, 4]\n")
    sweep(SweepSettings(str(recipe), str(space), trials=2, prune=False))
    assert len(seen) == 2
    with caplog.at_level("INFO", logger="tunelab.sweep"):
        results = sweep(SweepSettings(str(recipe), str(space), trials=8, prune=False))
    assert "a grid of 6 combinations" in caplog.text
    trials = study_of(tmp_path / "runs" / "tiny-sweep").get_trials()
    assert len(trials) == 6 == len(seen) and all(t.state == TrialState.COMPLETE for t in trials)
    combos = {(t.params["train.lr"], t.params["train.batch_size"]) for t in trials}
    assert combos == {(lr, bs) for lr in (0.001, 0.002, 0.003) for bs in (2, 4)}
    assert not any(t.user_attrs.get("baseline") for t in trials)
    assert len(results.rows) == 6
    sweep(SweepSettings(str(recipe), str(space), trials=8, prune=False))
    assert len(seen) == 6 and len(study_of(tmp_path / "runs" / "tiny-sweep").get_trials()) == 6


def test_a_trials_description_says_its_values(tmp_path):
    """The report's first line is the recipe's description, which names the recipe's settings: a trial's adds
    the values it changed."""
    from tunelab.sweep.trial import TrialSetup, trial_recipe
    file = tiny_recipe(tmp_path)
    raw, _ = read_recipe_raw(file)
    raw["description"] = "A tiny model trained with lr 1e-3."
    space = load_space(write_space(tmp_path, "train.lr: [0.002, 0.003]\ntrain.batch_size: [2, 4]\n"), raw, file)
    setup = TrialSetup(raw, file, space, None, tmp_path / "runs" / "tiny-sweep", False)
    recipe = trial_recipe(setup, {"train.lr": 0.002, "train.batch_size": 4}, "trial-000")
    assert recipe.description == ("A tiny model trained with lr 1e-3. A sweep's trial: train.lr=0.002, "
                                  "train.batch_size=4.")
    assert (recipe.train.lr, recipe.train.batch_size, recipe.name) == (0.002, 4, "trial-000")


def test_a_trial_behind_the_others_is_pruned_at_that_checkpoint(tmp_path, monkeypatch):
    import tunelab.pipeline
    outcomes = {"trial-000": ([0.4, 0.6, 0.8], 1.0), "trial-001": ([0.5, 0.7, 0.9], 1.0),
                "trial-002": ([0.1, 0.1, 0.9], 1.0)}
    seen: list = []
    monkeypatch.setattr(tunelab.pipeline, "run", scripted_run(outcomes, seen))
    recipe = tiny_recipe(tmp_path)
    space = write_space(tmp_path, "train.lr: [0.001, 0.002, 0.003, 0.004, 0.005]\n")
    sweep(SweepSettings(str(recipe), str(space), trials=3))
    trials = study_of(tmp_path / "runs" / "tiny-sweep").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    # checkpoint 1 is never judged (warm-up); at checkpoint 2 it is behind the median of the others
    assert trials[2].user_attrs["pruned_at"] == "step-000002" and list(trials[2].intermediate_values) == [1, 2]
    # each checkpoint's value is the competition score its accuracy would get at the run's ratio (10 / 1000)
    from tunelab.scoring import competition_score
    assert trials[0].intermediate_values == {i: pytest.approx(competition_score("stage1", acc, 0.01))
                                             for i, acc in enumerate([0.4, 0.6, 0.8], start=1)}


def test_a_failed_trial_is_counted_and_the_sweep_goes_on(tmp_path, monkeypatch, caplog, optuna_said):
    import tunelab.pipeline
    seen: list = []
    good = scripted_run({"trial-000": ([0.5], 1.0), "trial-002": ([0.6], 1.0)}, seen)

    def run(recipe, resume=False, on_checkpoint=None):
        if recipe.name == "trial-001":  # as the training loop says it
            raise TunelabError("loss became nan at step 3", file=recipe.run_dir, field="train.lr")
        return good(recipe, resume, on_checkpoint)
    monkeypatch.setattr(tunelab.pipeline, "run", run)
    recipe = tiny_recipe(tmp_path)
    space = write_space(tmp_path, "train.lr: [0.001, 0.002, 0.003, 0.004, 0.005]\n")
    results = sweep(SweepSettings(str(recipe), str(space), trials=3, prune=False))
    trials = study_of(tmp_path / "runs" / "tiny-sweep").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["error"] == "diverged: loss became nan at step 3" and results.best.number == 2
    assert results.rows[1][2] == "fail" and results.rows[1][-1] == "diverged: loss became nan at step 3"
    assert "trial 1 diverged: loss became nan at step 3" in caplog.messages
    assert not [r.getMessage() for r in optuna_said if "failed" in r.getMessage()]  # said once, by the trial


# --- the pipeline's hook -----------------------------------------------------------------------------

def test_run_hands_each_checkpoint_over_and_a_raise_stops_it_there(tmp_path):
    from tunelab.pipeline import run
    recipe = load_recipe(tiny_recipe(tmp_path))
    seen = []

    class Stop(Exception):
        pass

    def hook(written):
        seen.append((written.path.name, written.index, written.evaluate()["arithmetic"]["accuracy"]))
        if written.index == 2:
            raise Stop

    with pytest.raises(Stop):
        run(recipe, on_checkpoint=hook)
    assert [(name, index) for name, index, _ in seen] == [("step-000002", 1), ("step-000004", 2)]
    assert [c.name for c in list_checkpoints(recipe.run_dir)] == ["step-000002", "step-000004"]
    cached = recipe.run_dir / "eval" / "step-000004" / "results.json"
    assert cached.exists()
    stamp = cached.stat().st_mtime_ns
    metrics = run(recipe, resume=True)  # the run goes on, and its report reuses what the hook evaluated
    assert metrics["checkpoints"]["step-000004"]["arithmetic"]["accuracy"] == seen[1][2]
    assert cached.stat().st_mtime_ns == stamp and "step-000006" in metrics["checkpoints"]


def test_time_spent_in_the_hook_is_not_training_time(tmp_path):
    from tunelab.train.loop import train
    recipe = load_recipe(tiny_recipe(tmp_path))
    started = time.perf_counter()
    summary = train(recipe, on_checkpoint=lambda path, info: time.sleep(2))
    wall = time.perf_counter() - started  # three checkpoints, 2 s each in the hook: 6 s of it
    assert 0 < summary["train_seconds"] <= wall - 6
    # the last metrics line (step 6) is written after the hooks of steps 2 and 4
    assert max(json.loads(line)["elapsed_s"] for line in (recipe.run_dir / "metrics.jsonl").open()) <= wall - 4


@pytest.mark.parametrize("name, overrides", [("quickstart", ["train.max_steps=300"]), ("sweep-cpu", []),
                                             ("smollm2-choice", []), ("smollm2-math-grpo", [])])
def test_the_shipped_spaces_fit_their_recipes_and_hold_their_values(name, overrides):
    """docs/sweep.md's demonstration and short CPU path, stage 2's adapter table and GRPO's defaults: every value of
    recipes/spaces/<name>.yaml gives a valid recipe, and the recipe's own values are in it (the first trial, or a
    point of the grid)."""
    recipe = ROOT / "recipes" / f"{name}.yaml"
    raw, _ = read_recipe_raw(recipe, overrides)
    space = load_space(ROOT / "recipes" / "spaces" / f"{name}.yaml", raw, recipe)
    assert space.params_of(raw) is not None


ASKER = """
import sys, time
import optuna
from tunelab.sweep.study import open_storage
storage = open_storage(sys.argv[1])
study = optuna.load_study(study_name="race", storage=storage)
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
print(study.ask().number)
"""


def test_a_waiting_trial_is_taken_by_one_worker_only(tmp_path):
    """Six processes ask the SQLite study for a trial at the same instant while one trial waits (the recipe's own
    values, a retry): exactly one of them gets it. pysqlite's reads outside a transaction let several take it."""
    from tunelab.sweep.study import open_storage
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    study.enqueue_trial({"x": 1})
    start = time.time() + 8  # every process has imported optuna and opened the storage by then
    procs = [subprocess.Popen([sys.executable, "-c", ASKER, url, str(start)], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    numbers = sorted(int(p.communicate(timeout=120)[0]) for p in procs)
    assert numbers == [0, 1, 2, 3, 4, 5]
