"""The UI's Train tab: pick a recipe, edit it, and start, stop or resume `tunelab run` on it from the page.

The editor's text is checked by tunelab's own recipe loader on every change, so the page shows the same
`line, field` error the command line would, and nothing starts from a recipe that does not load. Start writes the
checked text to `<runs>/.ui-recipes/<name>.yaml` and launches `tunelab run` on it as a process of its own (its own
session: it outlives the UI), its output going to `<output_dir>/<name>.log` beside the run, which the page tails.
The run lock is the only guard against two writers: a Start on a run that a process is writing shows the lock's
refusal, whichever page or terminal started it. Stop sends SIGTERM to the lock's holder (the run checkpoints and
exits 75); Resume launches `tunelab run --resume`. What the page shows of a run comes from its directory, its
lock and its log, so a restarted UI finds a run it started before. A sweep (`ui.sweep`) is started the same way
(`spawn`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tunelab.compare import read_run
from tunelab.errors import TunelabError
from tunelab.recipe import Recipe, load_recipe
from tunelab.serve.ui.places import Places
from tunelab.serve.ui.plan import CARDS, DEFAULT_CARD, plan_text
from tunelab.serve.ui.runs import run_status, step_log
from tunelab.train.run_lock import run_lock, writer_of, writer_pid

EDITOR = "recipe (editor)"
RECIPE_COPIES = ".ui-recipes"
LOG_TAIL_BYTES = 12_000


def recipe_choices(places: Places) -> list[str]:
    """The shipped recipes (`<project>/recipes/*.yaml`) and every run's recipe.yaml, as paths the page accepts."""
    shipped = sorted((places.project / "recipes").glob("*.yaml"))
    runs = sorted(places.runs.rglob("recipe.yaml")) if places.runs.is_dir() else []
    runs = [p for p in runs if not any(part.startswith(".") for part in p.relative_to(places.runs).parts)]
    return [places.shown(p) for p in [*shipped, *runs]]


def read_recipe_file(places: Places, path: str) -> str:
    """The text of a recipe file the page may read: inside the project or runs directory, a .yaml or .yml file."""
    resolved = places.confine(path)
    if resolved.suffix not in (".yaml", ".yml") or not resolved.is_file():
        raise TunelabError("not a recipe file (.yaml or .yml)", file=path)
    return resolved.read_text(encoding="utf-8", errors="replace")


def check_recipe_text(places: Places, text: str) -> Recipe:
    """The editor's text loaded by the recipe loader exactly as `tunelab run` will load its copy (from the folder
    the copy is written to), then every local path it names kept inside the project or runs directory. A problem
    is one error naming the editor, the line and the field."""
    folder = places.runs / RECIPE_COPIES
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".check-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        recipe = load_recipe(tmp)
    except TunelabError as e:
        raise TunelabError(e.message, file=EDITOR, line=e.line, field=e.field) from e
    finally:
        Path(tmp).unlink(missing_ok=True)
    places.confine(recipe.run_dir)
    named = [recipe.model.path] + [p for s in [*recipe.data.train, *(t.source for t in recipe.eval.tasks if t.source)]
                                   for p in (s.path, s.corpus)]
    for path in named:
        if path and Path(path).exists():
            places.confine(path)
    return recipe


def log_path(run_dir: Path) -> Path:
    return run_dir.parent / f"{run_dir.name}.log"


def launch_run(places: Places, text: str, resume: bool) -> tuple[Path, subprocess.Popen]:
    """Check the text, refuse a run another process writes (the lock's own message), write the copy and start
    `tunelab run COPY [--resume]` in the project directory, in a session of its own, its output to the log."""
    places.check_action()
    recipe = check_recipe_text(places, text)
    run_dir = places.confine(recipe.run_dir)
    with run_lock(run_dir):   # raises the lock's refusal when a process writes the run; released at once
        pass
    copy = places.runs / RECIPE_COPIES / f"{run_dir.name}.yaml"
    copy.write_text(text, encoding="utf-8")
    return run_dir, spawn(places, ["run", str(copy), *(["--resume"] if resume else [])], log_path(run_dir))


def spawn(places: Places, arguments: list[str], log: Path) -> subprocess.Popen:
    """`tunelab ARGUMENTS` in the project directory, in a session of its own (it outlives the UI), its output
    appended to `log` after the command line (a refused or resumed start never erases what was said before).
    Paths inside the project are given relative to it (the process runs there): the command the log, the run's
    lock and the Train tab's status show is the one a user would type in the project."""
    arguments = [places.shown(Path(a)) if Path(a).is_absolute() else a for a in arguments]
    with open(log, "ab") as out:
        out.write(f"$ tunelab {' '.join(arguments)}\n".encode())
        out.flush()
        return subprocess.Popen([sys.executable, "-m", "tunelab.cli", *arguments], cwd=places.project, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop_run(places: Places, run_dir: Path) -> str:
    """SIGTERM to the process writing the run (found by its lock, whoever started it)."""
    places.check_action()
    pid = writer_pid(places.confine(run_dir))
    if pid is None:
        return "No process is writing this run. 该训练未在运行。"
    os.kill(pid, signal.SIGTERM)
    return (f"Sent SIGTERM to PID {pid}: the run writes a checkpoint and exits 75; Resume continues it. "
            f"已发送停止信号，训练将保存检查点后退出。")


def log_tail(run_dir: Path) -> str:
    """The end of the run's log, a progress bar's redrawn line (carriage returns) shown as its last state."""
    path = log_path(run_dir)
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(line.rsplit("\r", 1)[-1] if line.rstrip("\r") else "" for line in text.split("\n")[-40:])


def run_state(run_dir: Path, process: subprocess.Popen | None) -> str:
    """One line: who writes the run (the lock), how far it got (metrics.jsonl), and how the UI's own process for it
    ended, if it started one."""
    writer = writer_of(run_dir)
    try:
        lines = step_log(run_dir)
        progress = f" · step {lines[-1]['step']}, loss {lines[-1].get('loss', float('nan')):.4f}" if lines else ""
    except TunelabError as e:  # a damaged metrics.jsonl: said, not a traceback in the page
        progress = f" · ⚠️ {e}"
    if writer:
        return f"**training 训练中**{progress} · {writer}"
    ended = ""
    if process is not None and process.poll() is not None:
        ended = f" · process exited with {process.returncode}"
    if not run_dir.is_dir():
        return f"not started 未开始{ended}"
    return f"**{run_status(read_run(run_dir, run_dir.name))}**{progress}{ended}"


def plan_controls(places: Places, editor, path) -> None:
    """The memory plan of the editor's recipe on a card picked (or a size typed), `tunelab plan`'s (`ui.plan`)."""
    import gradio as gr

    with gr.Accordion("Memory plan 显存估算", open=False):
        with gr.Row():
            card = gr.Dropdown(list(CARDS), value=DEFAULT_CARD, allow_custom_value=True, elem_id="train-gpu",
                               label="GPU 显卡 (or a size such as 20GiB 或输入显存大小)", scale=3)
            plan = gr.Button("Plan 估算", elem_id="train-plan", scale=1)
        shown = gr.Markdown("", elem_id="train-plan-out")

    def plan_fn(text, chosen, where):
        if not (text or "").strip():
            return "Load a recipe first. 请先载入配方。"
        try:
            recipe = check_recipe_text(places, text)
            return plan_text(recipe, chosen, places.confine(where) if (where or "").strip() else None)
        except TunelabError as e:
            return f"⚠️ {e}"
    plan.click(plan_fn, [editor, card, path], shown)


def process_panel(prefix: str, label: str, lines: int) -> tuple:
    """The action line, the state line and the log tail of a process the page started (a run, a sweep)."""
    import gradio as gr

    action = gr.Markdown("", elem_id=f"{prefix}-action")
    state = gr.Markdown("", elem_id=f"{prefix}-state")
    log = gr.Textbox(label=label, lines=lines, max_lines=lines, autoscroll=True, interactive=False,
                     elem_id=f"{prefix}-log")
    return action, state, log


def train_tab(places: Places, sweep=None) -> None:
    """Train: a recipe picked or typed, edited and checked, its memory plan; Start, Stop, Resume; the run's state
    and log, polled; `sweep(editor)`, if given, adds the controls of a sweep over the editor's recipe."""
    import gradio as gr

    processes: dict[Path, subprocess.Popen] = {}   # only for exit codes: the run's state is read from its files
    with gr.Tab("Train 训练", id="train"):
        with gr.Row():
            pick = gr.Dropdown(recipe_choices(places), label="recipe 配方", value=None, elem_id="train-pick",
                               scale=3)
            path = gr.Textbox(label="or a recipe path 或输入路径", elem_id="train-path", scale=3)
            load = gr.Button("Load 载入", elem_id="train-load", scale=1)
        editor = gr.Code("", language="yaml", label="recipe 配方 (YAML)", elem_id="train-editor", lines=18)
        check = gr.Markdown("", elem_id="train-check")
        plan_controls(places, editor, path)
        with gr.Row():
            start = gr.Button("Start 开始", variant="primary", elem_id="train-start")
            stop = gr.Button("Stop 停止", elem_id="train-stop")
            resume = gr.Button("Resume 继续", elem_id="train-resume")
        action, state, log = process_panel("train", "log 日志", 14)
        if sweep is not None:
            sweep(editor)
        run_dir = gr.State(None)
        timer = gr.Timer(1.0)

    def load_fn(where):
        """The file's text and its check together, not a cleared check for the editor's change event to fill: with
        the cores busy that event's verdict was once lost after a recipe was picked again, and the check stayed
        blank (CI); the change event still checks every edit."""
        try:
            text = read_recipe_file(places, where)
        except TunelabError as e:
            return gr.skip(), f"⚠️ {e}", gr.skip()
        return text, *check_fn(text)

    def check_fn(text):
        if not (text or "").strip():
            return "", None
        try:
            where = places.confine(check_recipe_text(places, text).run_dir)
        except TunelabError as e:
            return f"⚠️ {e}", None
        return f"✅ recipe OK 配方有效 · run 训练目录 `{places.shown(where)}`", str(where)

    def launch_fn(resume_it: bool):
        def handler(text):
            try:
                where, process = launch_run(places, text, resume_it)
            except TunelabError as e:
                return f"⚠️ {e}", gr.skip()
            processes[where] = process
            return f"Started PID {process.pid} 已启动 (log 日志: `{places.shown(log_path(where))}`)", str(where)
        return handler

    def stop_fn(where):
        if not where:
            return "Load a recipe first. 请先载入配方。"
        try:
            return stop_run(places, Path(where))
        except TunelabError as e:
            return f"⚠️ {e}"

    def poll(where):
        for process in processes.values():   # reaped as they end, whichever run the page shows
            process.poll()
        if not where:
            return "", ""
        return run_state(Path(where), processes.get(Path(where))), log_tail(Path(where))

    pick.input(lambda p: (p, *load_fn(p)), pick, [path, editor, check, run_dir])
    load.click(load_fn, path, [editor, check, run_dir])
    path.submit(load_fn, path, [editor, check, run_dir])
    editor.change(check_fn, editor, [check, run_dir])
    start.click(launch_fn(False), editor, [action, run_dir])
    resume.click(launch_fn(True), editor, [action, run_dir])
    stop.click(stop_fn, run_dir, action)
    timer.tick(poll, run_dir, [state, log], show_progress="hidden")
