r"""What the UI's chat tabs share (`UIContext`): the models, the vote store, the example prompts, the sampling
controls and the models' status.

Stop strings are typed literally, separated by `|`; a backslash escapes only these: `\n` newline, `\t` tab,
`\|` a literal bar, `\\` a backslash. Any other backslash (a trailing one included) is kept as it is.

The sampling sliders start from the model's generation_config.json (greedy for a tunelab checkpoint scored
greedily), else from the UI's defaults (temperature 0.7); in Side by side and the Arena each model answers with its
own defaults until a slider is moved.

The model set grows while the page runs: the Runs tab opens a run's checkpoints (or its base) as local models
(`UIContext.open_model`, loaded as `tunelab ui MODEL` loads one at start). At most `MAX_OPENED` models opened this
way stay loaded: opening one more unloads the least recently used of them (an answer it is writing then ends with
an error), so memory does not grow with every comparison; the models given at start are never unloaded.
"""

from __future__ import annotations

import random
import tempfile
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from tunelab.serve.arena import ArenaStore
from tunelab.serve.backends import BackendError, GenerationSettings
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


MAX_OPENED = 4   # models opened from runs that stay loaded at once (the least recently used is unloaded)


class Unloaded:
    """What a name stands for once its model was unloaded (or never loaded): every answer is an error that says
    how to get it back."""

    remote = False

    def __init__(self, name: str):
        self.name = name

    def describe(self) -> str:
        return "unloaded"

    def check(self) -> tuple[bool, str]:
        return False, "unloaded 已卸载"

    def defaults(self, fallback: GenerationSettings) -> GenerationSettings:
        return fallback

    def chat_stream(self, messages: list[dict], settings: GenerationSettings):
        raise BackendError(f"{self.name} is not loaded (at most {MAX_OPENED} models opened from runs stay loaded): "
                           f"open it again from the Runs tab / 模型已卸载，请在训练记录中重新打开")


class UIContext:
    """What the tabs share: the models, the vote store, the example prompts, the sampling controls, which models
    are unreachable (the status check finds out, the arena leaves them out) and the leaderboard's outputs.
    `load_model(path, name=…)` loads a local model (`ServedModel.load` with the UI's device, precision and batch)
    for `open_model`."""

    def __init__(self, backends: dict, store: ArenaStore, examples: list[str], min_votes: int, max_new_tokens: int,
                 export_votes: bool, load_model=None):
        self.backends = backends
        self.names = list(backends)
        self.load_model = load_model
        self.opened: OrderedDict[str, None] = OrderedDict()   # models opened from runs, least recently used first
        self.pairs: dict[str, tuple[str, str]] = {}           # arena pairs opened from runs, by their label
        self._models = threading.Lock()                       # guards backends, names, opened and pairs
        self._loading = threading.Lock()                      # one model loads at a time
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

    def backend(self, name: str):
        """The model called `name` (`Unloaded` when it is not loaded), marked as just used."""
        with self._models:
            if name in self.opened:
                self.opened.move_to_end(name)
            return self.backends.get(name) or Unloaded(name)

    def open_model(self, path: str, name: str) -> str:
        """Load the local model at `path` as `name` (or find it loaded already, under whatever name) and return
        the name it answers to; beyond `MAX_OPENED` opened models, the least recently used one is unloaded."""
        from tunelab.serve.backends import LocalBackend
        from tunelab.convert.resolve_model import resolve_model
        from tunelab.serve.models import ServedModel

        with self._loading:
            model_dir = Path(resolve_model(path, field="model").path).resolve()
            with self._models:
                for known, b in self.backends.items():
                    served = getattr(b, "served", None)
                    if served is not None and Path(served.model_dir).resolve() == model_dir:
                        if known in self.opened:
                            self.opened.move_to_end(known)
                        return known
            served = (self.load_model or ServedModel.load)(path, name=name)
            with self._models:
                while name in self.backends:
                    name += "'"
                self.backends[name] = LocalBackend(name, served)
                self.names.append(name)
                self.opened[name] = None
                unloaded = []
                while len(self.opened) > MAX_OPENED:
                    old, _ = self.opened.popitem(last=False)
                    unloaded.append(self.backends.pop(old))
                    self.names.remove(old)
                    self.pairs = {k: v for k, v in self.pairs.items() if old not in v}
        for b in unloaded:
            b.served.close()
        return name

    def add_pair(self, a: str, b: str) -> str:
        """Offer `a` and `b` as a pair the Arena draws its battles from; the pair's label."""
        label = f"{a} vs {b}"
        with self._models:
            self.pairs[label] = (a, b)
        return label

    def slider_values(self, name: str | None) -> list:
        """A model's defaults as the sliders' values (temperature, top-p, top-k, max tokens), within their ranges
        (the UI's own defaults before any model is loaded)."""
        d = self.backend(name).defaults(self.fallback) if name else self.fallback
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
        with self._models:
            backends = dict(self.backends)

        def check(name):
            try:
                results[name] = backends[name].check()
            except Exception as e:  # noqa: BLE001
                results[name] = (False, f"{type(e).__name__}: {e}")
        threads = [threading.Thread(target=check, args=(n,), daemon=True) for n in backends]
        for t in threads:
            t.start()
        for t in threads:
            t.join(8)
        lines = ["| model 模型 | where 位置 | status 状态 |", "|---|---|---|"]
        for n in backends:
            ok, msg = results.get(n, (False, "no answer in 8 s / 超时"))
            (self.unreachable.discard if ok else self.unreachable.add)(n)
            lines.append(f"| {n} | {backends[n].describe()} | {'✅' if ok else '❌'} {msg} |")
        return "\n".join(lines)

    def board_outputs(self):
        import gradio as gr

        lb = leaderboard(self.store.votes(), self.names, min_votes=self.min_votes)
        matrix_headers = ["model 模型"] + lb.models
        return (lb.message, gr.Dataframe(value=lb.table(), headers=COLUMNS),
                gr.Dataframe(value=lb.matrix(), headers=matrix_headers))
