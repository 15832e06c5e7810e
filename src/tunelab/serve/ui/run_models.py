"""From a run to the arena: two of a run's checkpoints, or one and the run's base model, opened in Side by side or
as the pair of a blind Arena battle, from the Runs tab.

A checkpoint is loaded as `tunelab ui runs/<run>/checkpoints/step-N` loads it at start (`UIContext.open_model`:
`ServedModel.load`, a LoRA adapter merged into its base) and answers as `<run>/step-N`, the name the command line
gives it; the base, the recipe's `model.path`, answers as `<run>/base`. A checkpoint must lie inside the runs
directory and a local base inside the project or runs directory (`ui.places`); a base that is a hub id is loaded as
the run loaded it. Loading runs a model in this process, so, like Start, it needs the login on a page served beyond
localhost. Arena votes go to the page's vote store (`tunelab ui --db`), the one `tunelab data prefs --arena` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.model.base_record import looks_like_hub_id
from tunelab.recipe import load_recipe
from tunelab.runs import checkpoint_dirs
from tunelab.serve.ui.arena import ANY_TWO
from tunelab.serve.ui.context import UIContext
from tunelab.serve.ui.places import Places

BASE = "base model 基座模型"
PICKER = "compare"


@dataclass
class ModelPickers:
    """The components that show the page's model set, updated when models are opened: the tab container (to
    switch to Side by side or the Arena), the chat tabs (shown once there are models), the Chat and Side by side
    model pickers and the Arena's pair picker."""
    tabs: object
    chat_tabs: list
    chat: object
    side_a: object
    side_b: object
    among: object


def run_dir_of(places: Places, run: str | None) -> Path:
    """The run `run` of the runs directory (and nowhere else: not the project directory around it)."""
    if not run:
        raise TunelabError("open a run first")
    run_dir = places.confine(places.runs / run)
    if places.runs not in run_dir.parents:
        raise TunelabError("not a run of the runs directory", file=run)
    return run_dir


def base_model(places: Places, run_dir: Path) -> str | None:
    """The model the run started from (its recipe's `model.path`; a local one outside the project and runs
    directories is refused), or None: a model trained from scratch, or a recipe that no longer loads."""
    try:
        path = load_recipe(run_dir / "recipe.yaml", check_data=False).model.path
    except TunelabError:
        return None
    if not path:
        return None
    here = Path(path).expanduser()
    if not (here if here.is_absolute() else places.project / here).exists() and looks_like_hub_id(path):
        return path
    return str(places.confine(path))   # relative to the project directory, where `tunelab run` started


def model_choices(places: Places, run: str | None) -> list[str]:
    """What a run offers to compare: its checkpoints, oldest first, then its base model if it has one."""
    try:
        run_dir = run_dir_of(places, run)
    except TunelabError:
        return []
    try:
        base = base_model(places, run_dir)
    except TunelabError:   # a base outside the project: not offered (opening it says why)
        base = None
    return [c.name for c in checkpoint_dirs(run_dir)] + ([BASE] if base else [])


def model_target(places: Places, run: str, choice: str) -> tuple[str, str]:
    """(path to load, name to answer as) of one of `model_choices`."""
    run_dir = run_dir_of(places, run)
    if choice == BASE:
        base = base_model(places, run_dir)
        if base is None:
            raise TunelabError("the run has no base model to load (trained from scratch)", file=run)
        return base, f"{run}/base"
    checkpoint = places.confine(run_dir / "checkpoints" / (choice or ""))
    if checkpoint.parent != run_dir / "checkpoints" or not checkpoint.is_dir():
        raise TunelabError("not a checkpoint of the run", file=f"{run}/checkpoints/{choice}")
    return str(checkpoint), f"{run}/{choice}"


def open_pair(ctx: UIContext, places: Places, run: str, left: str, right: str) -> tuple[str, str]:
    """Load the run's `left` and `right` models (checkpoint names or `BASE`) into the page's model set; their
    names. Refused without the login beyond localhost, for two picks that are one model, and for any path
    outside the runs directory."""
    places.check_action()
    if not left or not right or left == right:
        raise TunelabError("pick two different models of the run", field=PICKER)
    targets = [model_target(places, run, choice) for choice in (left, right)]   # every path checked before a load
    a, b = (ctx.open_model(path, name) for path, name in targets)
    if a == b:
        raise TunelabError(f"both picks are one model ({a})", field=PICKER)
    return a, b


def picker_updates(ctx: UIContext, pickers: ModelPickers, chat_value, shown: tuple[str, str], pair: str | None):
    """Updates for `ModelPickers` after models were opened: every picker offers the models now loaded; Side by
    side shows `shown`; the Arena's pair picker shows `pair` (else every model)."""
    import gradio as gr

    names = list(ctx.names)
    among = [ANY_TWO, *ctx.pairs]
    return (*[gr.Tab(visible=True) for _ in pickers.chat_tabs],
            gr.Dropdown(choices=names, value=chat_value if chat_value in names else shown[0]),
            gr.Dropdown(choices=names, value=shown[0]), gr.Dropdown(choices=names, value=shown[1]),
            gr.Dropdown(choices=among, value=pair if pair in among else ANY_TWO))


def run_models_controls(ctx: UIContext, places: Places, pick, pickers: ModelPickers) -> None:
    """The Runs tab's "compare" controls for the opened run (`pick`): two of its models and where to open them.
    Their choices follow the run picked and its new checkpoints (sent only when they change)."""
    import gradio as gr

    with gr.Accordion("Compare two checkpoints 对比两个检查点", open=False, elem_id="compare"):
        with gr.Row():
            left = gr.Dropdown([], label="model A 模型 A", elem_id="compare-left")
            right = gr.Dropdown([], label="model B 模型 B", elem_id="compare-right")
        with gr.Row():
            side = gr.Button("Open side by side 并排对比", elem_id="compare-side")
            arena = gr.Button("Blind arena battle 匿名对战", elem_id="compare-arena")
        message = gr.Markdown("", elem_id="compare-message")
        shown = gr.State(None)
        timer = gr.Timer(5.0)

    def choices_fn(run, was):
        now = model_choices(places, run)
        if now == was:
            return gr.skip(), gr.skip(), was
        steps = [c for c in now if c != BASE]
        right = steps[-1] if steps else None        # the newest against the base, else against the one before
        left = BASE if BASE in now else (steps[-2] if len(steps) > 1 else right)
        return gr.Dropdown(choices=now, value=left), gr.Dropdown(choices=now, value=right), now
    pick.change(choices_fn, [pick, shown], [left, right, shown])
    timer.tick(choices_fn, [pick, shown], [left, right, shown], show_progress="hidden")

    def open_fn(where: str):
        def handler(run, a, b, chat_value):
            try:
                names = open_pair(ctx, places, run, a, b)
            except TunelabError as e:
                return f"⚠️ {e}", gr.skip(), *[gr.skip() for _ in range(len(pickers.chat_tabs) + 4)]
            pair = None
            if where == "arena":
                pair = ctx.add_pair(*names)
            said = (f"Opened **{names[0]}** and **{names[1]}**" + (
                " in Side by side. 已在并排对比中打开。" if where == "side" else
                " for a blind battle: which is A is drawn anew each battle. 已加入竞技场匿名对战。"))
            return said, gr.Tabs(selected=where), *picker_updates(ctx, pickers, chat_value, names, pair)
        return handler
    outputs = [message, pickers.tabs, *pickers.chat_tabs, pickers.chat, pickers.side_a, pickers.side_b,
               pickers.among]
    side.click(open_fn("side"), [pick, left, right, pickers.chat], outputs)
    arena.click(open_fn("arena"), [pick, left, right, pickers.chat], outputs)
