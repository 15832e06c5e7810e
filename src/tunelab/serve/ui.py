r"""`tunelab ui`: a Gradio web app to talk to models, compare two side by side, rank them in an arena, and train.

Tabs: Chat (streaming, sampling controls, stop, clear, example prompts, time per answer) · Side by side (one
prompt, two models streaming at once) · Arena (two anonymous models drawn at random, one vote, then names are
revealed) · Leaderboard (Bradley-Terry and Elo with bootstrap intervals, vote counts, win-rate matrix, CSV /
JSON export) · Runs (`ui_runs`: the runs table, a run's report, curves, checkpoints, export) · Train (`ui_train`:
a recipe edited and checked, `tunelab run` started, stopped, resumed), the paths they take kept inside the project
and runs directories (`ui_places`). Models are local tunelab models (in-process engine) or remote
OpenAI-compatible servers; without any, the app is the Runs and Train tabs.
Each tab is built by its own function (`chat_tab`, `side_by_side_tab`, `arena_tab`, `leaderboard_tab`) from what
they share (`UIContext`), so a tab reads, and changes, on its own; `build_app` only puts them together.

Stop strings are typed literally, separated by `|`; a backslash escapes only these: `\n` newline, `\t` tab,
`\|` a literal bar, `\\` a backslash. Any other backslash (a trailing one included) is kept as it is.

A vote counts once per battle (the store refuses a second one; the UI says it was already counted).
`tunelab ui --auth USER:PASS` puts the whole app, the export files included, behind a login; listening beyond
localhost without it prints a warning, and the vote export (every stored prompt and answer) is then not offered.

The sampling sliders start from the model's generation_config.json (greedy for a tunelab checkpoint scored
greedily), else from the UI's defaults (temperature 0.7); in Side by side and the Arena each model answers with its
own defaults until a slider is moved.
"""

from __future__ import annotations

import json
import queue
import random
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from tunelab.errors import TunelabError
from tunelab.serve.arena import ArenaStore
from tunelab.serve.backends import BackendError, GenerationSettings
from tunelab.serve.ratings import COLUMNS, leaderboard
from tunelab.serve.ui_export import export_paths
from tunelab.serve.ui_places import LOCAL_HOSTS, Places
from tunelab.serve.ui_runs import runs_tab
from tunelab.serve.ui_train import train_tab

DEFAULT_EXAMPLES = [
    "计算 12.5 + 7.25 = ?",
    "What is 345 - 78?",
    "Write one sentence about autumn.",
    "用一句话介绍你自己。",
]
ERROR_MARK = "⚠️ "


@dataclass
class Answer:
    text: str = ""
    error: str | None = None
    seconds: float | None = None
    first_token: float | None = None
    done: bool = False

    def shown(self) -> str:
        if self.error:
            return (self.text + "\n\n" if self.text else "") + ERROR_MARK + self.error
        return self.text

    def timing(self) -> str:
        if self.error:
            return "failed 失败"
        if not self.done:
            return "generating… 生成中"
        ttft = f", first token 首字 {self.first_token:.2f} s" if self.first_token is not None else ""
        return f"⏱ {self.seconds:.2f} s{ttft}, {len(self.text)} chars 字符"


def load_examples(path: str | None) -> list[str]:
    """Example prompts: the file's (`serve.prompts.read_prompts`), else a few built-in ones."""
    from tunelab.serve.prompts import read_prompts
    return read_prompts(path, "examples") if path else list(DEFAULT_EXAMPLES)


_ESCAPES = {"n": "\n", "t": "\t", "|": "|", "\\": "\\"}


def parse_stops(text: str | None) -> tuple[str, ...]:
    r"""The UI's stop-string field: `|` separates, `\n` `\t` `\|` `\\` are escapes, everything else is
    literal (Chinese included; a lone or unknown backslash stays a backslash)."""
    stops, cur, i = [], [], 0
    text = text or ""
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            cur.append(_ESCAPES[text[i + 1]])
            i += 2
            continue
        if c == "|":
            stops.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    stops.append("".join(cur))
    return tuple(s for s in stops if s)


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


def content_text(content) -> str:
    """Chat content from the browser (list of {"type": "text", "text"} blocks) or from Python (a string)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return "".join(content_text(c) for c in content)
    return str(content)


def history_messages(history) -> list[dict]:
    """The chatbot value as plain {"role", "content": str} messages."""
    out = []
    for m in history or []:
        if isinstance(m, dict):
            role, content = m.get("role"), content_text(m.get("content"))
        else:  # (user, assistant) pairs from older clients
            role, content = getattr(m, "role", None), content_text(getattr(m, "content", ""))
        if role in ("user", "assistant", "system"):
            out.append({"role": role, "content": content})
    return out


def prompt_messages(history: list[dict]) -> list[dict]:
    """Messages to send to a model: failed answers (and the question they failed on) are left out."""
    out: list[dict] = []
    for m in history:
        if m["role"] == "assistant" and m["content"].startswith(ERROR_MARK):
            if out and out[-1]["role"] == "user":
                out.pop()
            continue
        out.append(m)
    return out


def stream_answers(jobs: list[tuple[object, list[dict], GenerationSettings]]) -> Iterator[list[Answer]]:
    """Run several (backend, messages, settings) at once, each in a thread; yield all answers after every change."""
    q: queue.Queue = queue.Queue()
    stop = threading.Event()
    answers = [Answer() for _ in jobs]

    def work(k: int, backend, messages: list[dict], settings: GenerationSettings) -> None:
        t0 = time.perf_counter()
        try:
            gen = backend.chat_stream(messages, settings)
            try:
                for piece in gen:
                    q.put((k, "text", piece, time.perf_counter() - t0))
                    if stop.is_set():
                        break
            finally:
                gen.close()     # a local model's sequence is cancelled, its slot freed
            q.put((k, "done", None, time.perf_counter() - t0))
        except BackendError as e:
            q.put((k, "error", str(e), time.perf_counter() - t0))
        except Exception as e:  # noqa: BLE001 - shown in the chat, never kills the app
            q.put((k, "error", f"{type(e).__name__}: {e}", time.perf_counter() - t0))

    for k, (backend, messages, settings) in enumerate(jobs):
        threading.Thread(target=work, args=(k, backend, messages, settings), daemon=True).start()
    try:
        running = len(jobs)
        while running:
            events = [q.get()]
            while True:         # coalesce what has arrived meanwhile into one UI update
                try:
                    events.append(q.get_nowait())
                except queue.Empty:
                    break
            for k, kind, value, t in events:
                a = answers[k]
                if kind == "text":
                    if a.first_token is None:
                        a.first_token = t
                    a.text += value
                else:
                    a.done, a.seconds = True, t
                    if kind == "error":
                        a.error = value
                    running -= 1
            yield answers
    finally:
        stop.set()


def settings_of(temperature, top_p, top_k, max_tokens, stop_text) -> GenerationSettings:
    """The sampling controls' values as settings."""
    return GenerationSettings(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
                              max_tokens=int(max_tokens), stop=parse_stops(stop_text))


class UIContext:
    """What the tabs share: the models, the vote store, the example prompts, the sampling controls, which models
    are unreachable (the status check finds out, the arena leaves them out) and the leaderboard's outputs."""

    def __init__(self, backends: dict, store: ArenaStore, examples: list[str], min_votes: int, max_new_tokens: int,
                 export_votes: bool):
        self.backends = backends
        self.names = list(backends)
        self.store = store
        self.examples = examples
        self.min_votes = min_votes
        self.export_votes = export_votes
        self.fallback = GenerationSettings(max_tokens=max_new_tokens)   # for a model whose config states no decoding
        self.rng = random.Random()
        self.unreachable: set[str] = set()   # failed their last status check: left out of arena draws
        self.export_dir = Path(tempfile.mkdtemp(prefix="tunelab-ui-"))

    def settings_for(self, backend, own: bool, chosen: GenerationSettings) -> GenerationSettings:
        """A model's own defaults (with the chosen stop strings) while `own` is ticked, else the sliders'."""
        return replace(backend.defaults(self.fallback), stop=chosen.stop) if own else chosen

    def slider_values(self, name: str) -> list:
        """A model's defaults as the sliders' values (temperature, top-p, top-k, max tokens), within their ranges."""
        d = self.backends[name].defaults(self.fallback)
        return [min(max(d.temperature, 0.0), 2.0), min(max(d.top_p, 0.01), 1.0), min(max(d.top_k, 0), 200),
                min(max(d.max_tokens, 1), 2048)]

    def sampling_controls(self, prefix: str, start: str, own_defaults: bool = False) -> list:
        """Sliders starting at model `start`'s defaults; with `own_defaults`, a ticked box first that lets each
        model answer with its own defaults instead (moving a slider unticks it)."""
        import gradio as gr

        temp0, top_p0, top_k0, max0 = self.slider_values(start)
        with gr.Accordion("Settings 参数", open=False):
            own = gr.Checkbox(True, label="each model answers with its own defaults 各模型使用自己的默认参数 "
                                          "(moving a slider applies the sliders to both 拖动滑块则两边都用滑块)",
                              elem_id=f"{prefix}-own-defaults") if own_defaults else None
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=temp0, step=0.05, label="temperature 温度 (0 = greedy 贪心)",
                                        elem_id=f"{prefix}-temperature")
                top_p = gr.Slider(0.01, 1.0, value=top_p0, step=0.01, label="top-p (1 = off 关闭)",
                                  elem_id=f"{prefix}-topp")
                top_k = gr.Slider(0, 200, value=top_k0, step=1, label="top-k (0 = off 关闭)", elem_id=f"{prefix}-topk")
                max_tokens = gr.Slider(1, 2048, value=max0, step=1, label="max new tokens 最大生成长度",
                                       elem_id=f"{prefix}-max-tokens")
            stop_text = gr.Textbox(label="stop strings 停止词 (literal, separated by |; escapes \\n \\t \\| \\\\; "
                                         "e.g. \\n\\n|###)", value="",
                                   elem_id=f"{prefix}-stop")
        sliders = [temperature, top_p, top_k, max_tokens]
        if own is None:
            return sliders + [stop_text]
        for slider in sliders:
            slider.input(lambda: False, None, own)
        return [own, *sliders, stop_text]

    def status_table(self) -> str:
        results: dict[str, tuple[bool, str]] = {}

        def check(name):
            try:
                results[name] = self.backends[name].check()
            except Exception as e:  # noqa: BLE001
                results[name] = (False, f"{type(e).__name__}: {e}")
        threads = [threading.Thread(target=check, args=(n,), daemon=True) for n in self.names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(8)
        lines = ["| model 模型 | where 位置 | status 状态 |", "|---|---|---|"]
        for n in self.names:
            ok, msg = results.get(n, (False, "no answer in 8 s / 超时"))
            (self.unreachable.discard if ok else self.unreachable.add)(n)
            lines.append(f"| {n} | {self.backends[n].describe()} | {'✅' if ok else '❌'} {msg} |")
        return "\n".join(lines)

    def board_outputs(self):
        import gradio as gr

        lb = leaderboard(self.store.votes(), self.names, min_votes=self.min_votes)
        matrix_headers = ["model 模型"] + lb.models
        return (lb.message, gr.Dataframe(value=lb.table(), headers=COLUMNS),
                gr.Dataframe(value=lb.matrix(), headers=matrix_headers))


def vote_buttons_enabled(on: bool) -> list:
    """An update per vote button: clickable or not."""
    import gradio as gr
    return [gr.Button(interactive=on) for _ in VOTE_LABELS]


def chat_tab(ctx: UIContext):
    """Chat: one model, a streamed conversation, its sliders following the model picked; and the models' status.
    Returns the status markdown (the app fills it on load)."""
    import gradio as gr

    names, backends = ctx.names, ctx.backends
    with gr.Tab("Chat 对话", id="chat"):
        chat_model = gr.Dropdown(names, value=names[0], label="model 模型", elem_id="chat-model")
        chatbot = gr.Chatbot(label="chat 对话", height=420, elem_id="chat-bot")
        chat_timing = gr.Markdown("", elem_id="chat-timing", elem_classes=["answer-timing"])
        with gr.Row():
            chat_input = gr.Textbox(placeholder="Type a message 输入消息…", show_label=False, scale=6,
                                    elem_id="chat-input", lines=1)
            chat_send = gr.Button("Send 发送", variant="primary", scale=1, elem_id="chat-send")
            chat_stop = gr.Button("Stop 停止", scale=1, elem_id="chat-stop")
            chat_clear = gr.Button("Clear 清空", scale=1, elem_id="chat-clear")
        chat_controls = ctx.sampling_controls("chat", names[0])
        gr.Examples([[e] for e in ctx.examples], inputs=[chat_input], label="examples 示例")
        with gr.Accordion("Models 模型状态", open=False):
            status_md = gr.Markdown("checking… 检查中", elem_id="model-status")
            gr.Button("Check again 重新检查", size="sm").click(ctx.status_table, None, status_md)

    def chat_fn(message, history, model, temperature, top_p, top_k, max_tokens, stop_text):
        history = history_messages(history)
        if not (message or "").strip():
            yield history, message, ""
            return
        settings = settings_of(temperature, top_p, top_k, max_tokens, stop_text)
        messages = prompt_messages(history) + [{"role": "user", "content": message}]
        history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield history, "", "generating… 生成中"
        for (a,) in stream_answers([(backends[model], messages, settings)]):
            history[-1] = {"role": "assistant", "content": a.shown()}
            yield history, "", f"**{model}** · {a.timing()}"

    chat_inputs = [chat_input, chatbot, chat_model, *chat_controls]
    ev1 = chat_send.click(chat_fn, chat_inputs, [chatbot, chat_input, chat_timing])
    ev2 = chat_input.submit(chat_fn, chat_inputs, [chatbot, chat_input, chat_timing])
    chat_stop.click(None, None, None, cancels=[ev1, ev2])
    chat_clear.click(lambda: ([], "", ""), None, [chatbot, chat_input, chat_timing], cancels=[ev1, ev2])
    chat_model.change(ctx.slider_values, chat_model, chat_controls[:4])   # the sliders start from the new model's
    return status_md


def side_by_side_tab(ctx: UIContext) -> None:
    """Side by side: one prompt, two chosen models streaming at once, each keeping its own conversation."""
    import gradio as gr

    names, backends = ctx.names, ctx.backends
    with gr.Tab("Side by side 并排对比", id="side"):
        with gr.Row():
            with gr.Column():
                side_model_a = gr.Dropdown(names, value=names[0], label="left model 左侧模型",
                                           elem_id="side-model-a")
                side_bot_a = gr.Chatbot(label="left 左", height=360, elem_id="side-bot-a")
                side_time_a = gr.Markdown("", elem_classes=["answer-timing"])
            with gr.Column():
                side_model_b = gr.Dropdown(names, value=names[1 if len(names) > 1 else 0],
                                           label="right model 右侧模型", elem_id="side-model-b")
                side_bot_b = gr.Chatbot(label="right 右", height=360, elem_id="side-bot-b")
                side_time_b = gr.Markdown("", elem_classes=["answer-timing"])
        with gr.Row():
            side_input = gr.Textbox(placeholder="One prompt for both 同一个问题发给两个模型…", show_label=False,
                                    scale=6, elem_id="side-input")
            side_send = gr.Button("Send 发送", variant="primary", scale=1, elem_id="side-send")
            side_stop = gr.Button("Stop 停止", scale=1)
            side_clear = gr.Button("Clear 清空", scale=1)
        side_controls = ctx.sampling_controls("side", names[0], own_defaults=True)
        gr.Examples([[e] for e in ctx.examples], inputs=[side_input], label="examples 示例")

    def side_fn(message, hist_a, hist_b, model_a, model_b, own, temperature, top_p, top_k, max_tokens, stop_text):
        hist_a, hist_b = history_messages(hist_a), history_messages(hist_b)
        if not (message or "").strip():
            yield hist_a, hist_b, message, "", ""
            return
        settings = settings_of(temperature, top_p, top_k, max_tokens, stop_text)
        jobs = [(backends[model_a], prompt_messages(hist_a) + [{"role": "user", "content": message}],
                 ctx.settings_for(backends[model_a], own, settings)),
                (backends[model_b], prompt_messages(hist_b) + [{"role": "user", "content": message}],
                 ctx.settings_for(backends[model_b], own, settings))]
        hist_a = hist_a + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        hist_b = hist_b + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        for a, b in stream_answers(jobs):
            hist_a[-1] = {"role": "assistant", "content": a.shown()}
            hist_b[-1] = {"role": "assistant", "content": b.shown()}
            yield hist_a, hist_b, "", f"**{model_a}** · {a.timing()}", f"**{model_b}** · {b.timing()}"

    side_inputs = [side_input, side_bot_a, side_bot_b, side_model_a, side_model_b, *side_controls]
    side_outputs = [side_bot_a, side_bot_b, side_input, side_time_a, side_time_b]
    ev3 = side_send.click(side_fn, side_inputs, side_outputs)
    ev4 = side_input.submit(side_fn, side_inputs, side_outputs)
    side_stop.click(None, None, None, cancels=[ev3, ev4])
    side_clear.click(lambda: ([], [], "", "", ""), None, side_outputs, cancels=[ev3, ev4])


def arena_tab(ctx: UIContext) -> tuple:
    """Arena: two anonymous models drawn at random (reachable ones first) answer one prompt; the vote buttons
    open when both have answered. Returns (battle state, reveal markdown, vote buttons) for `arena_votes`."""
    import gradio as gr

    names, backends = ctx.names, ctx.backends
    with gr.Tab("Arena 竞技场", id="arena"):
        gr.Markdown("Two anonymous models answer the same prompt; vote for the better answer, then their "
                    "names are shown. Each prompt starts a new battle. "
                    "两个匿名模型回答同一个问题；投票后揭晓模型名称。每个问题是一场新的对战。")
        arena_state = gr.State({})
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
        arena_controls = ctx.sampling_controls("arena", names[0], own_defaults=True)
        gr.Examples([[e] for e in ctx.examples], inputs=[arena_input], label="examples 示例")

    vote_buttons = [vote_left, vote_right, vote_tie, vote_bad]

    def arena_fn(message, state, own, temperature, top_p, top_k, max_tokens, stop_text):
        if len(names) < 2:
            yield ([], [], {}, message, "", "", "The arena needs at least two models. 竞技场至少需要两个模型。",
                   *vote_buttons_enabled(False))
            return
        if not (message or "").strip():
            yield gr.skip(), gr.skip(), state, message, gr.skip(), gr.skip(), gr.skip(), *vote_buttons_enabled(False)
            return
        pool = [n for n in names if n not in ctx.unreachable]
        a_name, b_name = ctx.rng.sample(pool if len(pool) >= 2 else names, 2)
        settings = settings_of(temperature, top_p, top_k, max_tokens, stop_text)
        msgs = [{"role": "user", "content": message}]
        battle = {"id": uuid.uuid4().hex, "a": a_name, "b": b_name, "prompt": message, "voted": False,
                  "complete": False}
        hist = [{"role": "user", "content": message}]
        for a, b in stream_answers([(backends[a_name], msgs, ctx.settings_for(backends[a_name], own, settings)),
                                    (backends[b_name], msgs, ctx.settings_for(backends[b_name], own, settings))]):
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
    arena_inputs = [arena_input, arena_state, *arena_controls]
    arena_send.click(arena_fn, arena_inputs, arena_outputs)
    arena_input.submit(arena_fn, arena_inputs, arena_outputs)
    return arena_state, arena_reveal, vote_buttons


def leaderboard_tab(ctx: UIContext) -> list:
    """Leaderboard: ratings, win-rate matrix, and the CSV / JSON export (the votes too, when `export_votes`).
    Returns the components `UIContext.board_outputs` fills."""
    import gradio as gr

    with gr.Tab("Leaderboard 排行榜", id="leaderboard"):
        board_msg = gr.Markdown("", elem_id="leaderboard-message")
        board_table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="leaderboard-table",
                                   label="ratings from anonymous battles 匿名对战评分")
        board_matrix = gr.Dataframe(interactive=False, elem_id="leaderboard-matrix",
                                    label="win rate of row vs column 行对列胜率 (ties count ½ 平局算半场)")
        with gr.Row():
            refresh = gr.Button("Refresh 刷新", elem_id="leaderboard-refresh")
            export = gr.Button("Export CSV / JSON 导出", elem_id="leaderboard-export")
        export_files = gr.File(label="exports 导出文件", file_count="multiple", interactive=False,
                               elem_id="leaderboard-files")
        gr.Markdown(f"Bradley-Terry is fitted with a Gaussian prior (regularised) and is the ranking; Elo "
                    f"(K=32) is shown for reference. A model needs {ctx.min_votes} votes to be ranked; models whose "
                    f"95% intervals overlap share a rank. "
                    f"Bradley-Terry 带正则化，用于排名；Elo 仅供参考。每个模型至少 {ctx.min_votes} 票才排名。")

    board = [board_msg, board_table, board_matrix]
    refresh.click(ctx.board_outputs, None, board)

    def export_fn():
        lb = leaderboard(ctx.store.votes(), ctx.names, min_votes=ctx.min_votes)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        csv_path = ctx.export_dir / f"leaderboard-{stamp}.csv"
        json_path = ctx.export_dir / f"leaderboard-{stamp}.json"
        csv_path.write_text(lb.to_csv(), encoding="utf-8")
        json_path.write_text(lb.to_json(), encoding="utf-8")
        if not ctx.export_votes:
            return [str(csv_path), str(json_path)]
        votes_path = ctx.export_dir / f"votes-{stamp}.jsonl"
        votes_path.write_text("".join(json.dumps(v, ensure_ascii=False) + "\n"
                                      for v in ctx.store.votes(anonymous_only=False)), encoding="utf-8")
        return [str(csv_path), str(json_path), str(votes_path)]
    export.click(export_fn, None, export_files)
    return board


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


def build_app(backends: dict, store: ArenaStore, examples: list[str] | None = None, min_votes: int = 10,
              title: str = "tunelab", max_new_tokens: int = 128, export_votes: bool = True,
              places: Places | None = None):
    """The Gradio app, a function per tab. `export_votes`: the export also writes every stored vote with its
    prompt and answers (leave it off for an app anyone on the network can reach without a login). `places`: the
    project and runs directories the Runs and Train tabs work in (without it, no such tabs); without models,
    only those two tabs."""
    import gradio as gr

    ctx = UIContext(backends, store, examples or list(DEFAULT_EXAMPLES), min_votes, max_new_tokens, export_votes)
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title} · chat, arena, runs 对话、竞技场、训练\n" + (
            f"{len(ctx.names)} model(s) 个模型: " + ", ".join(f"`{n}`" for n in ctx.names) if ctx.names else
            "No models to chat with: runs and training only. 未指定模型：仅训练与训练记录。"))
        if ctx.names:
            status = chat_tab(ctx)
            side_by_side_tab(ctx)
            arena_state, arena_reveal, vote_buttons = arena_tab(ctx)
            board = leaderboard_tab(ctx)
            arena_votes(ctx, arena_state, arena_reveal, vote_buttons, board)
            demo.load(ctx.status_table, None, status)
            demo.load(ctx.board_outputs, None, board)
        if places is not None:
            runs_tab(places, ctx.export_dir)
            train_tab(places)
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
