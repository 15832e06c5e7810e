"""An Ollama `Modelfile` for an exported GGUF file: FROM, the chat template as Ollama's Go template, stop tokens.

Ollama does not run a model's Jinja chat template; it needs its own Go template over `.Messages`. Rather than
translating Jinja, the template is probed: it is rendered for a few conversations whose contents are markers,
and the text it puts around each turn is read off (`ChatTurns`): what comes before the first user message (a
default system prompt, the user header), between a user message and the answer (end of turn, the assistant
header: the generation prompt), between an answer and the next user message, and around a system message (or
nothing, when the template ignores system messages, as tunelab's single-turn templates do). `ChatTurns.render`
rebuilds a conversation from those pieces exactly as the Go template does, and tests/test_gguf_export.py checks
it against the Jinja template on multi-turn conversations. A leading BOS is left out: llama.cpp adds it itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tunelab.errors import TunelabError

_MARK = "\u2063{}\u2063"  # a content no template changes and no text around it merges with


@dataclass(frozen=True)
class ChatTurns:
    """The text a chat template puts around the turns of a conversation."""
    first: str                 # before the first user message (no system message)
    after_user: str            # after a user message that an answer follows
    generation: str            # after the last user message: the generation prompt
    after_assistant: str       # after an answer that another user message follows
    system: tuple[str, str] | None  # (before, after) a leading system message; None: the template drops it

    def render(self, messages: list[dict]) -> str:
        """The conversation as the Go template renders it, generation prompt included after a last user turn."""
        out = []
        for i, m in enumerate(messages):
            last = i == len(messages) - 1
            if m["role"] == "system":
                if self.system:
                    out += [self.system[0], m["content"], self.system[1]]
            elif m["role"] == "user":
                out += [self.first if i == 0 else "", m["content"], self.generation if last else self.after_user]
            elif m["role"] == "assistant":
                out += [m["content"], "" if last else self.after_assistant]
        return "".join(out)

    def go_template(self) -> str:
        """The same as an Ollama TEMPLATE (Go text/template over .Messages); a piece that is empty, or the same
        either way, is written without its condition."""
        lit = _go_literal

        def either(condition: str, yes: str, no: str) -> str:
            if yes == no:
                return lit(yes)
            return f"{{{{ if {condition} }}}}{lit(yes)}" + (f"{{{{ else }}}}{lit(no)}" if no else "") + "{{ end }}"

        system = (f'{lit(self.system[0])}{{{{ $m.Content }}}}{lit(self.system[1])}' if self.system else "")
        return ('{{- range $i, $m := .Messages }}'
                '{{- $last := eq (len (slice $.Messages $i)) 1 }}'
                f'{{{{- if eq $m.Role "system" }}}}{system}'
                f'{{{{- else if eq $m.Role "user" }}}}{either("eq $i 0", self.first, "")}'
                f'{{{{ $m.Content }}}}{either("$last", self.generation, self.after_user)}'
                '{{- else if eq $m.Role "assistant" }}{{ $m.Content }}'
                f'{either("not $last", self.after_assistant, "")}'
                '{{- end }}{{- end }}')


def _go_literal(text: str) -> str:
    """Text as it stands in a Go template: a Go string action where it holds braces or starts with blanks that
    the `{{-` trimming before it would eat."""
    if not text:
        return ""
    if "{{" in text or "}}" in text or text[0].isspace() or text[-1].isspace():
        return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"
    return text


def _between(text: str, a: str, b: str | None) -> str:
    start = text.index(a) + len(a)
    return text[start:text.index(b, start)] if b is not None else text[start:]


def chat_turns(tokenizer, add_bos: bool = False) -> ChatTurns:
    """Probe the tokenizer's chat template (see the module docstring); `add_bos`: the runtime adds BOS itself,
    so a BOS the template writes first is left out."""
    u, x, v, s = (_MARK.format(k) for k in ("user", "answer", "again", "system"))

    def render(messages, generation=True):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    try:
        one = render([{"role": "user", "content": u}])
        three = render([{"role": "user", "content": u}, {"role": "assistant", "content": x},
                        {"role": "user", "content": v}])
    except Exception as e:  # noqa: BLE001 - any template failure is the template's, told in one line
        raise TunelabError(f"the chat template does not render a conversation: {e}", field="chat_template") from e
    if any(m not in three for m in (u, x, v)):
        raise TunelabError("the chat template does not show every turn of a conversation (user, assistant, user), "
                           "so no Ollama template follows from it", field="chat_template")
    first = one[:one.index(u)]
    bos = tokenizer.bos_token
    strip = bos if add_bos and bos and first.startswith(bos) else ""
    system = None
    try:
        with_system = render([{"role": "system", "content": s}, {"role": "user", "content": u}])
    except Exception:  # noqa: BLE001 - a template that refuses system messages: they are dropped
        with_system = ""
    if s in with_system:
        system = (with_system[:with_system.index(s)][len(strip):], _between(with_system, s, u))
    return ChatTurns(first=first[len(strip):], after_user=_between(three, u, x), generation=_between(one, u, None),
                     after_assistant=_between(three, x, v), system=system)


def ollama_modelfile(gguf_name: str, tokenizer, add_bos: bool = False, system: str = "") -> str:
    """The Modelfile text: FROM ./gguf_name, TEMPLATE (when the tokenizer has a chat template), SYSTEM (the
    system prompt the run trained with, `data.system`: Ollama puts it first in a conversation that brings none,
    as tunelab did in training), a stop PARAMETER per token that ends an answer (EOS and the template's end of
    turn). `add_bos`: the GGUF file's tokenizer.ggml.add_bos_token."""
    from tunelab.decoding.stops import end_of_turn_id
    lines = [f"FROM ./{gguf_name}", ""]
    if getattr(tokenizer, "chat_template", None):
        turns = chat_turns(tokenizer, add_bos)
        template = turns.go_template()
        if '"""' in template:
            raise TunelabError('the chat template holds """, which a Modelfile cannot quote', field="chat_template")
        lines += [f'TEMPLATE """{template}"""', ""]
        if system and turns.system is not None:
            if '"""' in system:
                raise TunelabError('the system prompt holds """, which a Modelfile cannot quote', field="data.system")
            lines += [f'SYSTEM """{system}"""', ""]
    stops = []
    for token_id in (tokenizer.eos_token_id, end_of_turn_id(tokenizer)):
        if token_id is not None:
            text = tokenizer.convert_ids_to_tokens(int(token_id))
            if text not in stops:
                stops.append(text)
    lines += [f"PARAMETER stop {json.dumps(t, ensure_ascii=False)}" for t in stops]
    return "\n".join(lines) + "\n"
