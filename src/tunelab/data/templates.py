"""Prompt templates. A run saves its template beside the model (as the tokenizer's chat template) so
training, evaluation and serving format prompts identically.

`none` is the template of a plain continuation model (a pretrained GPT): the prompt is the text as is, and
its chat template concatenates the messages' contents with nothing between them and no EOS after an
answer, so `tunelab serve` / `tunelab ui` let such a model continue whatever the conversation holds.

`model` is a pretrained chat model's own chat template (`tunelab.data.chat`): every prompt and every training row
is the tokenizer's `apply_chat_template`, so the model is trained, evaluated and served in the format it knows.
It needs the tokenizer, so a `model` template is bound to one (`bind`) where a tokenizer is at hand; tunelab's
own templates are bound too where they render several turns (an assistant turn ends with the tokenizer's EOS).

`sep` is the question-answer layout of supervised fine-tuning on a pretrained MiniGPT: question, the separator
SEP (`<|sep|>`, a special token of `tunelab tokenizer train`'s tokenizers), answer, EOT. The trainer puts the
loss on the answer and the EOT only (`data.packing.encode_examples`), so the model learns where an answer
stops. With a tokenizer that lacks SEP the same characters are ordinary text and still separate."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tunelab.data.examples import Example
from tunelab.errors import TunelabError

ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.\n\n")
ALPACA_INPUT_HEADER = ("Below is an instruction that describes a task, paired with an input that provides "
                       "further context. Write a response that appropriately completes the request.\n\n")
COT_SUFFIX = " Let's think step by step."
SEP = "<|sep|>"  # tunelab.model.tokenizer.SEP (the data stage does not import the model stage)

# name -> (no-input template, with-input template); {instruction} and {input} are filled in.
TEMPLATES: dict[str, tuple[str, str]] = {
    "alpaca": (
        ALPACA_HEADER + "### Instruction:\n{instruction}\n\n### Response:\n",
        ALPACA_INPUT_HEADER + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    ),
    "plain": ("{instruction}\n", "{instruction}\n{input}\n"),
    "qa": ("Q: {instruction}\nA: ", "Q: {instruction}\n{input}\nA: "),
    "none": ("{instruction}", "{instruction}\n{input}"),
    "sep": ("{instruction}" + SEP, "{instruction}\n{input}" + SEP),
}

MODEL = "model"  # the tokenizer's own chat template
AUTO = "auto"  # resolved for a model (`resolve`): its saved template, else its chat template, else alpaca
NAMES = (*TEMPLATES, MODEL, AUTO)

# every message's content, in order, as one text to continue
CONTINUATION_CHAT_TEMPLATE = "{%- for message in messages -%}{{ message['content'] }}{%- endfor -%}"


@dataclass(frozen=True)
class PromptTemplate:
    """Renders an example (one instruction and its response, or a conversation of many turns) into the text the
    model sees. tunelab's templates fill a fixed layout; `model` is the tokenizer's chat template (`system`: the
    run's system prompt, `kwargs`: extra template variables), usable once bound to a tokenizer (`bind`)."""

    name: str = "alpaca"
    instruction_prefix: str = ""
    cot: bool = False
    system: str = ""
    kwargs: tuple[tuple[str, Any], ...] = ()
    tokenizer: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.name not in NAMES:
            raise TunelabError(f"unknown template '{self.name}' (choose from {', '.join(NAMES)})",
                               field="data.template")

    @property
    def is_model(self) -> bool:
        return self.name == MODEL

    def resolve(self, tokenizer, model_dir=None) -> "PromptTemplate":
        """`auto` made concrete for the model `tokenizer` belongs to — the template a tunelab-made model was
        trained with (saved beside it), else the model's own chat template when it has one, else alpaca — and
        bound to `tokenizer`; any other template just bound."""
        if self.name != AUTO:
            return self.bind(tokenizer)
        saved = load_template(model_dir) if model_dir is not None else None
        name = saved.name if saved else MODEL if getattr(tokenizer, "chat_template", None) else "alpaca"
        return replace(self, name=name).bind(tokenizer)

    def bind(self, tokenizer) -> "PromptTemplate":
        """This template rendering with `tokenizer` (its chat template for `model`, its EOS between turns)."""
        if tokenizer is self.tokenizer:
            return self
        if self.name == AUTO:
            raise RuntimeError("template 'auto' is resolved for a model first (resolve)")
        bound = replace(self, tokenizer=tokenizer)
        if self.is_model:
            bound.chat()  # a tokenizer without a chat template is one clear error, here
        return bound

    def chat(self):
        """The bound tokenizer's chat template with this run's settings (`tunelab.data.chat.ModelChat`)."""
        from tunelab.data.chat import ModelChat
        if self.tokenizer is None:
            raise RuntimeError(f"template '{self.name}' renders turns only once bound to a tokenizer (bind)")
        return ModelChat(self.tokenizer, self.system, dict(self.kwargs))

    def _instruction(self, instruction: str) -> str:
        text = instruction
        if self.instruction_prefix:
            text = f"{self.instruction_prefix.rstrip()} {text}" if not self.instruction_prefix.endswith(
                "\n") else self.instruction_prefix + text
        if self.cot:
            text += COT_SUFFIX
        return text

    def user_text(self, instruction: str, input: str = "") -> str:
        """What a user turn of the `model` template holds for an instruction and its input (on the next line)."""
        text = self._instruction(instruction)
        return f"{text}\n{input}" if input else text

    def render(self, instruction: str, input: str = "") -> str:
        """The prompt of one instruction: the response follows directly."""
        if self.is_model:
            return self.chat().text([{"role": "user", "content": self.user_text(instruction, input)}], True)
        no_input, with_input = TEMPLATES[self.name]
        return (with_input if input else no_input).format(instruction=self._instruction(instruction), input=input)

    def messages(self, example: Example) -> list[dict]:
        """The example as a conversation: its own turns, or its instruction as the user's and its output as the
        assistant's."""
        if example.messages:
            return [dict(m) for m in example.messages]
        return [{"role": "user", "content": self.user_text(example.instruction, example.input)},
                {"role": "assistant", "content": example.output}]

    def prompt_messages(self, example: Example, shots: list[Example] | tuple = ()) -> list[dict]:
        """The turns before the example's last assistant turn, after `shots` given as earlier turns (few-shot as
        a conversation, lm-eval's `--fewshot_as_multiturn`); a system turn stays first."""
        turns = self.messages(example)
        last = max((i for i, m in enumerate(turns) if m.get("role") == "assistant"), default=len(turns))
        turns = turns[:last]
        earlier = [m for shot in shots for m in self.messages(shot) if m.get("role") != "system"]
        head = turns[:1] if turns and turns[0].get("role") == "system" else []
        return head + earlier + turns[len(head):]

    def render_prompt(self, example: Example, shots: list[Example] | tuple = ()) -> str:
        """The text the model continues to write the example's (last) answer."""
        if not shots and not example.messages and not self.is_model:
            return self.render(example.instruction, example.input)  # tunelab's single-turn layout, as ever
        return self.render_messages(self.prompt_messages(example, shots), add_generation_prompt=True,
                                    tools=example.tools)

    def render_messages(self, messages: list[dict], add_generation_prompt: bool = True,
                        tools: list | None = None) -> str:
        """A conversation as text: the chat template's (`model`), else each user turn in this template's layout
        and each assistant turn followed by EOS (system and tool turns are not shown, as `chat_template` says)."""
        if self.is_model:
            return self.chat().text(messages, add_generation_prompt, tools)
        if self.tokenizer is None:
            raise RuntimeError(f"template '{self.name}' renders turns only once bound to a tokenizer (bind)")
        parts = []
        for m in messages:
            if m.get("role") == "user":
                parts.append(self.render(m.get("content") or ""))
            elif m.get("role") == "assistant":
                parts.append((m.get("content") or "") + self.tokenizer.eos_token)
        return "".join(parts)

    def chat_template(self) -> str:
        """A Jinja chat template equivalent to render(): the last user message becomes the instruction,
        an optional system message is ignored, and an assistant message is followed by EOS.
        `none` (no prefix or CoT) concatenates the contents instead: a continuation model has no turns.
        `model`: the tokenizer's own template, unchanged."""
        if self.is_model:
            return self.chat().tokenizer.chat_template
        if self.name == "none" and not self.instruction_prefix and not self.cot:
            return CONTINUATION_CHAT_TEMPLATE
        no_input, _ = TEMPLATES[self.name]
        head, tail = no_input.split("{instruction}")
        prefix = self.instruction_prefix
        if prefix and not prefix.endswith("\n"):
            prefix = prefix.rstrip() + " "
        suffix = COT_SUFFIX if self.cot else ""

        def lit(s: str) -> str:
            return s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")

        return (
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}"
            f"{{{{ '{lit(head)}' + '{lit(prefix)}' + message['content'] + '{lit(suffix)}' + '{lit(tail)}' }}}}"
            "{%- elif message['role'] == 'assistant' -%}"
            "{{ message['content'] + eos_token }}"
            "{%- endif -%}"
            "{%- endfor -%}"
        )


def with_chat_template(tokenizer, chat_template: str):
    """`tokenizer` speaking `chat_template`: itself when that is its chat template already, else a copy of it that
    carries the template. The tokenizer given is never changed, so whoever else holds it renders as before; saved
    (`save_pretrained`), the copy writes the template into its files as the model's chat template."""
    import copy
    if getattr(tokenizer, "chat_template", None) == chat_template:
        return tokenizer
    try:
        bound = copy.deepcopy(tokenizer)
    except Exception:  # noqa: BLE001 - one that cannot be deep-copied shares its vocabulary, not its template
        bound = copy.copy(tokenizer)
    bound.chat_template = chat_template
    return bound


def tokenizer_speaking(template: PromptTemplate, tokenizer):
    """The tokenizer a run with `template` trains with and saves beside its model: `tokenizer` itself for `model`
    (a chat model's own template is never replaced), else one whose chat template is tunelab's template
    (`with_chat_template`), so a plain `transformers` user of the saved model renders prompts as the run did."""
    return tokenizer if template.is_model else with_chat_template(tokenizer, template.chat_template())


def recipe_template(data) -> PromptTemplate:
    """The template a recipe's `data:` section names (`tunelab.recipe.DataConfig`)."""
    return PromptTemplate(data.template, data.instruction_prefix, data.cot, data.system,
                          tuple(sorted(data.template_kwargs.items())))


TEMPLATE_FILE = "tunelab_template.json"


def save_template(template: PromptTemplate, directory) -> None:
    """Write the template beside a saved tokenizer so evaluation and serving format prompts the same way."""
    import json
    from pathlib import Path
    spec = {"name": template.name, "instruction_prefix": template.instruction_prefix, "cot": template.cot}
    if template.system:
        spec["system"] = template.system
    if template.kwargs:
        spec["kwargs"] = dict(template.kwargs)
    Path(directory, TEMPLATE_FILE).write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n",
                                              encoding="utf-8")


def load_template(directory) -> PromptTemplate | None:
    """The template saved with a model directory, or None if it has none."""
    import json
    from pathlib import Path
    p = Path(directory, TEMPLATE_FILE)
    if not p.is_file():
        return None
    spec = json.loads(p.read_text(encoding="utf-8"))
    return PromptTemplate(spec["name"], spec.get("instruction_prefix", ""), bool(spec.get("cot", False)),
                          spec.get("system", ""), tuple(sorted((spec.get("kwargs") or {}).items())))
