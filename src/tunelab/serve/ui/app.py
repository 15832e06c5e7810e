"""`tunelab ui`: a Gradio web app to talk to models, compare two side by side, rank them in an arena, and train.

Tabs, each built by a function of its own module from what they share (`ui.context.UIContext`), so a tab reads,
and changes, on its own; `build_app` only puts them together: Chat and Side by side (`ui.chat`: streaming,
sampling controls, stop, clear, example prompts, time per answer; one prompt, two models streaming at once) ·
Arena (`ui.arena`: two anonymous models drawn at random, one vote, then names are revealed) · Leaderboard
(`ui.leaderboard`: Bradley-Terry and Elo with bootstrap intervals, vote counts, win-rate matrix, CSV / JSON export)
· Runs (`ui.runs`: the runs table, a run's report, curves, checkpoints, export; two of its checkpoints opened in
Side by side or the Arena, `ui.run_models`) · Train (`ui.train`: a recipe edited and checked, its memory plan,
`ui.plan`; `tunelab run` started, stopped, resumed; a sweep, `ui.sweep`), the paths they take kept inside the
project and runs directories (`ui.places`). Models are local tunelab models (in-process engine) or remote
OpenAI-compatible servers; without any, the app shows the Runs and Train tabs until a run's checkpoints are opened.

`tunelab ui --auth USER:PASS` puts the whole app, the export files included, behind a login; listening beyond
localhost without it prints a warning, and the vote export (every stored prompt and answer) is then not offered.
"""

from __future__ import annotations

from functools import partial

from tunelab.errors import TunelabError
from tunelab.serve.arena import ArenaStore
from tunelab.serve.ui.arena import arena_tab, arena_votes
from tunelab.serve.ui.chat import chat_tab, side_by_side_tab
from tunelab.serve.ui.context import DEFAULT_EXAMPLES, UIContext
from tunelab.serve.ui.export import export_paths
from tunelab.serve.ui.leaderboard import leaderboard_tab
from tunelab.serve.ui.places import Places
from tunelab.serve.ui.run_models import ModelPickers, run_models_controls
from tunelab.serve.ui.runs import runs_tab
from tunelab.serve.ui.sweep import sweep_controls
from tunelab.serve.ui.train import train_tab


def build_app(backends: dict, store: ArenaStore, examples: list[str] | None = None, min_votes: int = 10,
              title: str = "tunelab", max_new_tokens: int = 128, export_votes: bool = True,
              places: Places | None = None, load_model=None):
    """The Gradio app, a function per tab. `export_votes`: the export also writes every stored vote with its
    prompt and answers (leave it off for an app anyone on the network can reach without a login). `places`: the
    project and runs directories the Runs and Train tabs work in (without it, no such tabs); without models,
    only those two tabs show, until the Runs tab opens a run's checkpoints as models (`ui.run_models`, loaded
    by `load_model(path, name=…)`, `ServedModel.load` by default)."""
    import gradio as gr

    ctx = UIContext(backends, store, examples or list(DEFAULT_EXAMPLES), min_votes, max_new_tokens, export_votes,
                    load_model)
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title} · chat, arena, runs 对话、竞技场、训练\n" + (
            f"{len(ctx.names)} model(s) 个模型: " + ", ".join(f"`{n}`" for n in ctx.names) if ctx.names else
            "No models to chat with yet: train, then compare a run's checkpoints from the Runs tab. "
            "未指定模型：可训练，并在训练记录中对比检查点。"))
        # "wrap": all six tabs stay in the bar (a second row if they must), none behind a "..." menu
        with gr.Tabs(selected="chat" if ctx.names else "runs", overflow_behavior="wrap") as tabs:
            if ctx.names or places is not None:
                status, chat, chat_model = chat_tab(ctx)
                side, side_a, side_b = side_by_side_tab(ctx)
                arena_state, arena_reveal, vote_buttons, arena, among = arena_tab(ctx)
                board, board_tab = leaderboard_tab(ctx)
                arena_votes(ctx, arena_state, arena_reveal, vote_buttons, board)
                demo.load(ctx.status_table, None, status)
                demo.load(ctx.board_outputs, None, board)
            if places is not None:
                pickers = ModelPickers(tabs, [chat, side, arena, board_tab], chat_model, side_a, side_b, among)
                runs_tab(places, ctx.export_dir, compare=partial(run_models_controls, ctx, places, pickers=pickers))
                train_tab(places, sweep=partial(sweep_controls, places))
    # exports are downloadable only where the page may make them (a public page without a login may not)
    demo.tunelab_allowed_paths = export_paths(places) if places is not None and places.actions_allowed else []
    demo.tunelab_css = ".answer-timing {font-size: 0.85em; opacity: 0.8}"
    return demo


def launch(demo, host: str = "127.0.0.1", port: int | None = None, prevent_thread_lock: bool = False,
           concurrency: int = 16, **kwargs):
    """Queue (so several users stream at once and share the engine's batches) and launch."""
    demo.queue(default_concurrency_limit=concurrency)
    return demo.launch(server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock,
                       css=getattr(demo, "tunelab_css", None), show_error=True,
                       allowed_paths=getattr(demo, "tunelab_allowed_paths", None), **kwargs)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """`USER:PASS` (or `USER:env:VAR`, the password read from environment variable VAR) for Gradio's login."""
    if value is None:
        return None
    import os
    user, sep, password = value.partition(":")
    if password.startswith("env:"):
        password = os.environ.get(password[4:], "")
    if not sep or not user.strip() or not password:
        raise TunelabError("expected USER:PASS (or USER:env:VAR) with a user name and a non-empty password",
                           field="auth")
    return user, password
