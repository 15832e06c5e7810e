"""The Train tab's sweep: `tunelab sweep RECIPE --space SPACE --trials N` over the editor's recipe, started, watched
and stopped from the page as Start does for a run.

The recipe passes the same check as Start first; the recipe and the space go to `<runs>/.ui-recipes/<name>.yaml`
and `<name>.space.yaml`, and the sweep runs as a process of its own session in the project directory, its output
appended to `<output_dir>/<name>-sweep.log` beside its directory (`<output_dir>/<name>-sweep`), which the page
tails; the space is the sweep's to check, and its one-line refusal is the log's last line. Who is sweeping is read
from the trials' run locks (a single-worker sweep trains each trial in its own process), so a restarted UI finds a
sweep it started, and a second Start while one trains is refused. Stop sends SIGTERM: the trial under way writes a
checkpoint, the sweep puts it back in the queue and exits 75 with one line naming the command that continues;
Start sweep again with the same recipe, space and trials continues it. Like Start, it needs the login on a page
served beyond localhost.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.serve.ui.places import Places
from tunelab.serve.ui.train import RECIPE_COPIES, check_recipe_text, log_path, log_tail, process_panel, spawn
from tunelab.train.run_lock import writer_of, writer_pid

SPACE_EXAMPLE = "train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"


def sweep_dir_of(places: Places, text: str) -> Path:
    """Where the sweep of the editor's recipe writes (its default `--out`), once the recipe passes the check."""
    run_dir = check_recipe_text(places, text).run_dir
    return places.confine(Path(run_dir).parent / f"{Path(run_dir).name}-sweep")


def sweep_writer(sweep_dir: Path) -> tuple[int, str] | None:
    """(PID, the lock's description) of the process training one of the sweep's trials, if one is."""
    for trial in sorted(sweep_dir.glob("trial-*")) if sweep_dir.is_dir() else []:
        pid = writer_pid(trial)
        if pid is not None:
            return pid, f"{trial.name}: {writer_of(trial)}"
    return None


def launch_sweep(places: Places, text: str, space: str, trials: int) -> tuple[Path, subprocess.Popen]:
    """Check the recipe, refuse a sweep whose trial a process trains, write the recipe and space copies and start
    `tunelab sweep COPY --space SPACE --trials N`; (the sweep directory, its process)."""
    places.check_action()
    if not (space or "").strip():
        raise TunelabError("the space is empty: name at least one field to search, e.g. " + SPACE_EXAMPLE.strip(),
                           file="space (editor)")
    trials = int(trials or 0)
    if trials < 1:
        raise TunelabError(f"the number of trials is at least 1, got {trials}", field="trials")
    sweep_dir = sweep_dir_of(places, text)
    busy = sweep_writer(sweep_dir)
    if busy:
        raise TunelabError(f"a sweep is training here already (PID {busy[0]}, {busy[1]}); Stop it first",
                           file=places.shown(sweep_dir))
    name = sweep_dir.name.removesuffix("-sweep")
    copy, space_copy = (places.runs / RECIPE_COPIES / f"{name}{suffix}" for suffix in (".yaml", ".space.yaml"))
    copy.write_text(text, encoding="utf-8")
    space_copy.write_text(space, encoding="utf-8")
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    return sweep_dir, spawn(places, ["sweep", str(copy), "--space", str(space_copy), "--trials", str(trials)],
                            log_path(sweep_dir))


def stop_sweep(places: Places, sweep_dir: Path, process: subprocess.Popen | None = None) -> str:
    """SIGTERM to the sweep: the process training its trial (by the trial's lock), else the one the page started
    while it is between trials."""
    places.check_action()
    busy = sweep_writer(places.confine(sweep_dir))
    pid = busy[0] if busy else (process.pid if process is not None and process.poll() is None else None)
    if pid is None:
        return "No sweep is running here. 没有正在进行的搜索。"
    os.kill(pid, signal.SIGTERM)
    return (f"Sent SIGTERM to PID {pid}: the trial under way writes a checkpoint and the sweep exits 75; Start sweep "
            f"again continues it. 已发送停止信号，再次开始即可继续。")


def sweep_state(sweep_dir: Path, process: subprocess.Popen | None) -> str:
    """One line: the trial being trained (its lock), how many trials have a run, and how the page's own process
    for the sweep ended, if it started one."""
    busy = sweep_writer(sweep_dir)
    runs = len(list(sweep_dir.glob("trial-*"))) if sweep_dir.is_dir() else 0
    ended = ""
    if process is not None and process.poll() is not None:
        ended = f" · process exited with {process.returncode}"
    if busy:
        return f"**sweeping 搜索中** · {runs} trial run(s) · {busy[1]}"
    return (f"{runs} trial run(s) in `{sweep_dir.name}`" if runs else "not started 未开始") + ended


def sweep_controls(places: Places, editor) -> None:
    """The sweep's space editor, trials, Start sweep and Stop sweep, its state and log (polled)."""
    import gradio as gr

    processes: dict[Path, subprocess.Popen] = {}   # only for exit codes and a stop between trials
    with gr.Accordion("Sweep 超参数搜索", open=False):
        space = gr.Code(SPACE_EXAMPLE, language="yaml", label="space 搜索空间 (YAML, docs/sweep.md)",
                        elem_id="sweep-space", lines=4)
        with gr.Row():
            trials = gr.Number(4, precision=0, minimum=1, label="trials 试验次数", elem_id="sweep-trials")
            start = gr.Button("Start sweep 开始搜索", elem_id="sweep-start")
            stop = gr.Button("Stop sweep 停止搜索", elem_id="sweep-stop")
        action, state, log = process_panel("sweep", "sweep log 搜索日志", 8)
        where = gr.State(None)
        timer = gr.Timer(2.0)

    def start_fn(text, space_text, count):
        try:
            sweep_dir, process = launch_sweep(places, text, space_text, count)
        except TunelabError as e:
            return f"⚠️ {e}", gr.skip()
        processes[sweep_dir] = process
        return (f"Started sweep PID {process.pid} 已启动 (log 日志: `{places.shown(log_path(sweep_dir))}`)",
                str(sweep_dir))

    def stop_fn(text, shown):
        try:
            sweep_dir = Path(shown) if shown else sweep_dir_of(places, text)
            return stop_sweep(places, sweep_dir, processes.get(sweep_dir))
        except TunelabError as e:
            return f"⚠️ {e}"

    def poll(shown):
        for process in processes.values():   # reaped as they end
            process.poll()
        if not shown:
            return gr.skip(), gr.skip()
        return sweep_state(Path(shown), processes.get(Path(shown))), log_tail(Path(shown))

    start.click(start_fn, [editor, space, trials], [action, where])
    stop.click(stop_fn, [editor, where], action)
    timer.tick(poll, where, [state, log], show_progress="hidden")
