"""The UI's Runs tab: every run under the runs directory as `tunelab runs table` shows it, and one run opened.

The table, its columns and the score-against-ratio plot are `tunelab.compare`'s, so the page and the command line
never disagree; the page adds what only a live view knows: whether a run is training now (its run lock is held),
was stopped and can resume (its last checkpoint was written on a stop signal), or holds a damaged checkpoint.
Everything is read from the run directories and their locks, never from the UI's memory, so a restarted UI shows
the runs it started before as they are. An opened run shows its report.md (its PNGs inlined: the page serves no
file of the run), its loss and learning-rate curves read from metrics.jsonl as it grows, its checkpoints with
their scores, and its Export and Hand-in buttons (`ui.export`).
"""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path

from tunelab.compare import EVALUATED, RunRow, cell_text, collect_runs, plot_score_vs_ratio, table
from tunelab.errors import TunelabError
from tunelab.records import read_json_object
from tunelab.runs import check_checkpoints, checkpoint_dirs, is_preemption, read_metrics
from tunelab.serve.ui.export import export_run
from tunelab.serve.ui.places import Places
from tunelab.train.run_lock import writer_of

log = logging.getLogger(__name__)

TRAINING, FINISHED, PREEMPTED = "training", "finished", "preempted (resumable)"
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def run_status(row: RunRow) -> str:
    """training (a process holds the run's lock), damaged (a file or checkpoint that cannot be read), finished
    (evaluated), preempted (its newest checkpoint was written on a stop signal), else the table's own status."""
    if writer_of(row.path):
        return TRAINING
    if row.status.startswith("unreadable"):
        return f"damaged ({row.status})"
    if (row.path / "checkpoints").is_dir():
        damaged = [c.name for c in check_checkpoints(row.path, checksums=False) if c.status == "damaged"]
        if damaged:
            return f"damaged checkpoint: {', '.join(damaged)}"
    if row.status == EVALUATED:
        return FINISHED
    newest = checkpoint_dirs(row.path)[-1:]
    if newest and is_preemption(newest[0]):
        return PREEMPTED
    return row.status


def runs_overview(places: Places) -> tuple[list[RunRow], list[str], list[list[str]], str]:
    """(rows, columns, cells as text, a one-line note): the runs table with each run's live status."""
    if not places.runs.is_dir():
        return [], [], [], f"No runs yet: `{places.shown(places.runs)}` does not exist. 还没有训练记录。"
    rows = collect_runs(places.runs)
    columns, values = table(rows)
    at = columns.index("status")
    cells = [[cell_text(c, v) for c, v in zip(columns, line)] for line in values]
    for row, line in zip(rows, cells):
        line[at] = run_status(row)
    training = sum(line[at] == TRAINING for line in cells)
    note = f"{len(rows)} run(s) in `{places.shown(places.runs)}`" + (f", {training} training" if training else "")
    return rows, columns, cells, note


def score_plot(rows: list[RunRow], out: Path) -> str | None:
    """compare's score-against-ratio PNG of the scored runs (Pareto front included), or None when none is scored."""
    try:
        return str(plot_score_vs_ratio(rows, out))
    except TunelabError:
        return None


def report_markdown(run_dir: Path) -> str:
    """The run's report.md, each PNG it shows inlined as a data URI (only images inside the run directory: the
    report is the run's own text, but a link out of it is never followed)."""
    report = run_dir / "report.md"
    if not report.is_file():
        return "_No report yet: the run writes report.md when it has been evaluated. 评估后才有报告。_"
    text = report.read_text(encoding="utf-8", errors="replace")
    root = run_dir.resolve()

    def inline(m: re.Match) -> str:
        target = (run_dir / m.group(2)).resolve()
        if target.suffix.lower() != ".png" or root not in target.parents or not target.is_file():
            return f"_{m.group(1)}_"
        data = base64.b64encode(target.read_bytes()).decode("ascii")
        return f"![{m.group(1)}](data:image/png;base64,{data})"
    return _IMAGE.sub(inline, text)


def step_log(run_dir: Path) -> list[dict]:
    """metrics.jsonl's lines so far, by the one reader's rule (`tunelab.runs.read_metrics`): the line being
    written is left out; a damaged line before it is a TunelabError naming the file and line, which the page
    shows in place of the curves."""
    return read_metrics(run_dir / "metrics.jsonl")


def curves(run_dir: Path):
    """(loss, learning rate) as data frames of step and value, for the line plots."""
    import pandas as pd

    lines = step_log(run_dir)

    def frame(key: str):
        points = [(r["step"], r[key]) for r in lines if isinstance(r.get(key), (int, float))]
        return pd.DataFrame(points, columns=["step", key])
    return frame("loss"), frame("lr")


def checkpoint_table(run_dir: Path) -> tuple[list[str], list[list]]:
    """(headers, a row per checkpoint directory): its state (sizes checked, not checksums), the validation loss
    it was saved with, each task's primary metric and its score where the run evaluated it, and which is best."""
    metrics: dict = {}
    if (run_dir / "metrics.json").is_file():
        try:
            metrics = read_json_object(run_dir / "metrics.json")
        except TunelabError as e:
            log.warning("%s", e)
    evaluated = metrics.get("checkpoints") or {}
    scores = metrics.get("checkpoint_scores") or {}
    tasks = list(dict.fromkeys(f"{label}/{r.get('primary_metric')}" for results in evaluated.values()
                               for label, r in results.items() if isinstance(r, dict)))
    headers = ["checkpoint", "state", "val_loss", *tasks, "score", "best"]
    rows = []
    checks = check_checkpoints(run_dir, checksums=False) if (run_dir / "checkpoints").is_dir() else []
    for c in checks:
        state = {}
        try:
            state = read_json_object(run_dir / "checkpoints" / c.name / "state.json")
        except TunelabError:
            pass
        results = evaluated.get(c.name) or {}
        task_cells = []
        for key in tasks:
            label, metric = key.split("/", 1)
            task_cells.append(cell_text(key, (results.get(label) or {}).get(metric)))
        rows.append([c.name, f"{c.status}: {c.detail}" if c.detail else c.status,
                     cell_text("val_loss", state.get("val_loss")), *task_cells,
                     cell_text("score", scores.get(c.name)), "★" if c.name == metrics.get("best_checkpoint") else ""])
    return headers, rows


def run_detail(places: Places, run: str | None):
    """What opening `run` shows: (status line, loss frame, lr frame, (checkpoint headers, rows), report markdown)."""
    if not run:
        return "Pick a run above. 请选择一个训练记录。", None, None, ([], []), ""
    try:
        run_dir = places.confine(places.runs / run)
    except TunelabError as e:
        return f"⚠️ {e}", None, None, ([], []), ""
    damaged = ""
    try:
        loss, lr = curves(run_dir)
    except TunelabError as e:  # a damaged metrics.jsonl: said, and the rest of the run still shown
        loss, lr, damaged = None, None, f" · ⚠️ {e}"
    headers, rows = checkpoint_table(run_dir)
    writer = writer_of(run_dir)
    status = f"**{run}** · " + (f"training: {writer}" if writer else "not training 未在训练")
    if loss is not None and len(loss):
        status += f" · step {int(loss['step'].iloc[-1])}, loss {loss['loss'].iloc[-1]:.4f}"
    status += damaged
    return status, loss, lr, (headers, rows), report_markdown(run_dir)


def changed(sent: dict, key: str, value, update):
    """`update` when `value` differs from what was sent under `key` (and `sent` records it), else a skip: a
    refresh that re-sent an unchanged dropdown or table would close its open menu or undo its sorting."""
    import gradio as gr

    if key in sent and sent[key] == value:
        return gr.skip()
    sent[key] = value
    return update


def export_controls(pick) -> tuple:
    """The opened run's Export (GGUF, with the quant type) and Hand-in buttons; returns (quant, buttons, message,
    files) for `runs_tab` to wire."""
    import gradio as gr

    from tunelab.convert.gguf_export import QUANTS
    with gr.Accordion("Export and hand in 导出与提交", open=False):
        with gr.Row():
            quant = gr.Dropdown(list(QUANTS), value="f16", label="GGUF type 量化类型", elem_id="export-quant")
            gguf = gr.Button("Export GGUF 导出 GGUF", elem_id="export-gguf")
            handin = gr.Button("Hand in 生成提交包", elem_id="export-handin")
        message = gr.Markdown("", elem_id="export-message")
        files = gr.File(label="download 下载", file_count="multiple", interactive=False, elem_id="export-files")
    return quant, gguf, handin, message, files


def runs_tab(places: Places, plot_dir: Path, compare=None) -> None:
    """Runs: the runs table (refreshed every few seconds, so training runs move), the score-against-ratio plot,
    and one run opened: its curves, checkpoints and report; `compare(pick)`, if given, adds the controls that
    open two of the picked run's checkpoints as models (`ui.run_models`) below its checkpoints."""
    import gradio as gr

    with gr.Tab("Runs 训练记录", id="runs"):
        note = gr.Markdown("", elem_id="runs-note")
        runs_table = gr.Dataframe(interactive=False, elem_id="runs-table", label="runs 训练记录 (click a header "
                                                                                "to sort 点击表头排序)")
        with gr.Row():
            pick = gr.Dropdown([], label="open a run 打开训练记录", elem_id="runs-pick", scale=4)
            refresh = gr.Button("Refresh 刷新", elem_id="runs-refresh", scale=1)
        plot = gr.Image(type="filepath", label="score against low-parameter ratio 分数-参数比", interactive=False,
                        elem_id="runs-plot", visible=False)
        status = gr.Markdown("", elem_id="run-status")
        with gr.Row():
            loss_plot = gr.LinePlot(x="step", y="loss", label="loss", elem_id="run-loss")
            lr_plot = gr.LinePlot(x="step", y="lr", label="learning rate 学习率", elem_id="run-lr")
        ckpts = gr.Dataframe(interactive=False, label="checkpoints 检查点", elem_id="run-checkpoints")
        if compare is not None:
            compare(pick)
        export_outputs = export_controls(pick)
        report = gr.Markdown("", elem_id="run-report")
        timer = gr.Timer(3.0)
        # what this page was sent last: the timer sends only what changed (an open menu stays). Made inside the
        # tab: a component made between tabs is taken for one (gradio 6.31 showed the selected tab twice)
        sent = gr.State({})
    plotted: dict = {}

    def overview(chosen, sent):
        rows, columns, cells, text = runs_overview(places)
        names = [r.run for r in rows]
        key = tuple((r.run, r.ratio, r.score, r.retention) for r in rows)
        if plotted.get("key") != key:
            n = plotted.get("n", 0) + 1   # a new name: the browser never shows a cached older plot
            plotted.update(key=key, n=n, path=score_plot(rows, plot_dir / f"score_vs_ratio-{n}.png"))
        chosen = chosen if chosen in names else (names[-1] if names else None)
        sent = dict(sent or {})
        return (changed(sent, "note", text, text),
                changed(sent, "table", (columns, cells), gr.Dataframe(value=cells, headers=columns or None)),
                changed(sent, "pick", (names, chosen), gr.Dropdown(choices=names, value=chosen)),
                changed(sent, "plot", plotted["path"], gr.Image(value=plotted["path"],
                                                                visible=plotted["path"] is not None)),
                *detail(chosen, sent), sent)

    def detail(run, sent):
        """The opened run's parts, each only where it changed since this page was sent it."""
        shown = run_detail(places, run)
        status, loss, lr, (headers, rows), report = shown
        values = [status, None if loss is None else loss.to_dict("list"), None if lr is None else lr.to_dict("list"),
                  (headers, rows), report]
        return [changed(sent, f"detail-{k}", value, out) for k, (value, out) in
                enumerate(zip(values, [status, loss, lr, gr.Dataframe(value=rows, headers=headers or None),
                                       report]))]

    def pick_fn(run, sent):
        sent = dict(sent or {})
        return (*detail(run, sent), sent)

    outputs = [note, runs_table, pick, plot, status, loss_plot, lr_plot, ckpts, report, sent]
    refresh.click(overview, [pick, sent], outputs)
    timer.tick(overview, [pick, sent], outputs, show_progress="hidden")
    pick.input(pick_fn, [pick, sent], [status, loss_plot, lr_plot, ckpts, report, sent])

    quant, gguf, handin, message, files = export_outputs

    def export_fn(kind: str):
        def handler(run, quant_type):
            if not run:
                return "Open a run first. 请先打开一个训练记录。", None
            try:
                text, made = export_run(places, run, kind, quant_type)
            except TunelabError as e:
                return f"⚠️ {e}", None
            return text, made or None
        return handler
    gguf.click(export_fn("gguf"), [pick, quant], [message, files])
    handin.click(export_fn("handin"), [pick, quant], [message, files])
