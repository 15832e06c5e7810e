"""What the UI's chat tabs share (`UIContext`): the models, the vote store, the example prompts, the sampling
controls and the models' status.

Stop strings are typed literally, separated by `|`; a backslash escapes only these: `\n` newline, `\t` tab,
`\|` a literal bar, `\\` a backslash. Any other backslash (a trailing one included) is kept as it is.

The sampling sliders start from the model's generation_config.json (greedy for a tunelab checkpoint scored
greedily), else from the UI's defaults (temperature 0.7); in Side by side and the Arena each model answers with its
own defaults until a slider is moved.
"""

from __future__ import annotations

import random
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from tunelab.serve.arena import ArenaStore
from tunelab.serve.backends import GenerationSettings
from tunelab.serve.ratings import COLUMNS, leaderboard

DEFAULT_EXAMPLES = [
    "计算 12.5 + 7.25 = ?",
    "What is 345 - 78?",
    "Write one sentence about autumn.",
    "用一句话介绍你自己。",
]


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
