"""The UI's Arena tab: two anonymous models answer one prompt, one vote per battle, then their names are shown.

A vote counts once per battle (the store refuses a second one; the UI says it was already counted). A battle is
drawn from every model, or from one pair the Runs tab opened (two checkpoints of a run): which of the two is A is
drawn at random, so the vote is still blind.
"""

from __future__ import annotations

import uuid

from tunelab.serve.arena import ArenaStore
from tunelab.serve.ui.answers import stream_answers
from tunelab.serve.ui.context import UIContext, settings_of


ANY_TWO = "any two models 任意两个模型"
VOTE_LABELS = {"left": "A is better 左边更好", "right": "B is better 右边更好", "tie": "tie 平局",
               "both_bad": "both bad 都不好"}


def cast_vote(store: ArenaStore, state: dict, kind: str) -> tuple[dict, str, bool]:
    """Record `kind` for the battle in `state`: (new state, what to show, whether this vote was counted). The
    store decides atomically, so of concurrent votes for one battle exactly one counts."""
    if not state or not state.get("complete"):
        return state, "Nothing to vote on: start a battle first. 请先开始一场对战。", False
    names = f"Model A = **{state['a']}**, Model B = **{state['b']}**."
    if state.get("voted"):
        return state, f"This battle's vote was already counted. 本场已投过票。 {names}", False
    counted = store.record(state["a"], state["b"], kind, state["prompt"], state["answer_a"], state["answer_b"],
                           anonymous=True, seconds_a=state.get("seconds_a"), seconds_b=state.get("seconds_b"),
                           battle=state["id"]) is not None
    state = {**state, "voted": True}
    if not counted:
        return state, (f"This battle's vote was already counted; this one was not. 本场已投过票，本次不计。 "
                       f"{names}"), False
    return state, (f"Your vote 你的投票: **{VOTE_LABELS[kind]}** — {names} Ask again for a new battle. "
                   f"再提问开始新的对战。"), True


def vote_buttons_enabled(on: bool) -> list:
    """An update per vote button: clickable or not."""
    import gradio as gr
    return [gr.Button(interactive=on) for _ in VOTE_LABELS]


def draw_pair(ctx: UIContext, among: str | None) -> tuple[str, str] | None:
    """Two models in random order: the pair the Runs tab opened as `among`, else two of all (reachable ones
    first); None when there are not two."""
    pair = ctx.pairs.get(among or "")
    if pair is not None:
        return tuple(ctx.rng.sample(pair, 2))
    names = list(ctx.names)
    if len(names) < 2:
        return None
    pool = [n for n in names if n not in ctx.unreachable]
    return tuple(ctx.rng.sample(pool if len(pool) >= 2 else names, 2))


def arena_tab(ctx: UIContext) -> tuple:
    """Arena: two anonymous models drawn at random (reachable ones first, or the pair picked) answer one prompt;
    the vote buttons open when both have answered. Returns (battle state, reveal markdown, vote buttons) for
    `arena_votes`, the tab and the pair picker."""
    import gradio as gr

    with gr.Tab("Arena 竞技场", id="arena", visible=bool(ctx.names)) as tab:
        gr.Markdown("Two anonymous models answer the same prompt; vote for the better answer, then their "
                    "names are shown. Each prompt starts a new battle. "
                    "两个匿名模型回答同一个问题；投票后揭晓模型名称。每个问题是一场新的对战。")
        arena_state = gr.State({})
        among = gr.Dropdown([ANY_TWO, *ctx.pairs], value=ANY_TWO, label="battle between 对战范围",
                            elem_id="arena-among")
        with gr.Row():
            with gr.Column():
                arena_bot_a = gr.Chatbot(label="Model A 模型 A", height=360, elem_id="arena-bot-a")
                arena_time_a = gr.Markdown("", elem_classes=["answer-timing"])
            with gr.Column():
                arena_bot_b = gr.Chatbot(label="Model B 模型 B", height=360, elem_id="arena-bot-b")
                arena_time_b = gr.Markdown("", elem_classes=["answer-timing"])
        with gr.Row():
            vote_left = gr.Button("👈 A is better 左边更好", interactive=False, elem_id="vote-left")
            vote_right = gr.Button("👉 B is better 右边更好", interactive=False, elem_id="vote-right")
            vote_tie = gr.Button("🤝 Tie 平局", interactive=False, elem_id="vote-tie")
            vote_bad = gr.Button("👎 Both bad 都不好", interactive=False, elem_id="vote-both-bad")
        arena_reveal = gr.Markdown("", elem_id="arena-reveal")
        with gr.Row():
            arena_input = gr.Textbox(placeholder="Ask both anonymous models 向两个匿名模型提问…",
                                     show_label=False, scale=6, elem_id="arena-input")
            arena_send = gr.Button("Battle 对战", variant="primary", scale=1, elem_id="arena-send")
        arena_controls = ctx.sampling_controls("arena", (ctx.names or [None])[0], own_defaults=True)
        gr.Examples([[e] for e in ctx.examples], inputs=[arena_input], label="examples 示例")

    vote_buttons = [vote_left, vote_right, vote_tie, vote_bad]

    def arena_fn(message, state, pair_label, own, temperature, top_p, top_k, max_tokens, stop_text):
        drawn = draw_pair(ctx, pair_label)
        if drawn is None:
            yield ([], [], {}, message, "", "", "The arena needs at least two models. 竞技场至少需要两个模型。",
                   *vote_buttons_enabled(False))
            return
        if not (message or "").strip():
            yield gr.skip(), gr.skip(), state, message, gr.skip(), gr.skip(), gr.skip(), *vote_buttons_enabled(False)
            return
        a_name, b_name = drawn
        model_a, model_b = ctx.backend(a_name), ctx.backend(b_name)
        settings = settings_of(temperature, top_p, top_k, max_tokens, stop_text)
        msgs = [{"role": "user", "content": message}]
        battle = {"id": uuid.uuid4().hex, "a": a_name, "b": b_name, "prompt": message, "voted": False,
                  "complete": False}
        hist = [{"role": "user", "content": message}]
        for a, b in stream_answers([(model_a, msgs, ctx.settings_for(model_a, own, settings)),
                                    (model_b, msgs, ctx.settings_for(model_b, own, settings))]):
            done = a.done and b.done
            battle.update(answer_a=a.text, answer_b=b.text, seconds_a=a.seconds, seconds_b=b.seconds,
                          complete=done and not a.error and not b.error)
            note = ""
            if done and not battle["complete"]:
                note = ("A model failed to answer, so this battle cannot be voted on. "
                        "有模型未能回答，本场不能投票。")
            elif done:
                note = "Vote below 请投票 ⬆"
            yield (hist + [{"role": "assistant", "content": a.shown()}],
                   hist + [{"role": "assistant", "content": b.shown()}],
                   battle, "", a.timing(), b.timing(), note, *vote_buttons_enabled(battle["complete"]))

    arena_outputs = [arena_bot_a, arena_bot_b, arena_state, arena_input, arena_time_a, arena_time_b,
                     arena_reveal, *vote_buttons]
    arena_inputs = [arena_input, arena_state, among, *arena_controls]
    arena_send.click(arena_fn, arena_inputs, arena_outputs)
    arena_input.submit(arena_fn, arena_inputs, arena_outputs)
    return arena_state, arena_reveal, vote_buttons, tab, among


def arena_votes(ctx: UIContext, arena_state, arena_reveal, vote_buttons: list, board: list) -> None:
    """The arena's vote buttons: one vote per battle, the names revealed, the leaderboard redrawn."""
    import gradio as gr

    def vote_fn(kind: str):
        def handler(state):
            state, shown, counted = cast_vote(ctx.store, state, kind)
            if not counted:
                gr.Warning(shown.split(" Model A")[0])
                if not state or not state.get("complete"):
                    return (state, gr.skip(), *vote_buttons_enabled(False), *ctx.board_outputs())
            return (state, shown, *vote_buttons_enabled(False), *ctx.board_outputs())
        return handler

    for button, kind in zip(vote_buttons, VOTE_LABELS):
        button.click(vote_fn(kind), [arena_state], [arena_state, arena_reveal, *vote_buttons, *board])
