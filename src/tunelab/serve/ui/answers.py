"""Answers streamed from models into the UI's conversations: several models answer at once (each on a thread of its
own), their pieces coalesced into one update per change; a failure is shown in the conversation, marked so that the
next prompt leaves the failed turn out, and never ends the app."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from tunelab.serve.backends import BackendError, GenerationSettings


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
