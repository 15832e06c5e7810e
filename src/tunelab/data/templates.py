"""Prompt templates. A run saves its template beside the model (as the tokenizer's chat template) so
training, evaluation and serving format prompts identically.

`none` is the template of a plain continuation model (a pretrained GPT): the prompt is the text as is, and
its chat template concatenates the messages' contents with nothing between them and no EOS after an
answer, so `tunelab serve` / `tunelab ui` let such a model continue whatever the conversation holds.

`sep` is the question-answer layout of supervised fine-tuning on a pretrained MiniGPT: question, the separator
SEP (`<|sep|>`, a special token of `tunelab tokenizer train`'s tokenizers), answer, EOT. The trainer puts the
loss on the answer and the EOT only (`data.packing.encode_examples`), so the model learns where an answer
stops. With a tokenizer that lacks SEP the same characters are ordinary text and still separate."""

from __future__ import annotations

from dataclasses import dataclass

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

# every message's content, in order, as one text to continue
CONTINUATION_CHAT_TEMPLATE = "{%- for message in messages -%}{{ message['content'] }}{%- endfor -%}"


@dataclass(frozen=True)
class PromptTemplate:
    """Renders (instruction, input) into the prompt the model sees; the response follows directly."""

    name: str = "alpaca"
    instruction_prefix: str = ""
    cot: bool = False

    def __post_init__(self):
        if self.name not in TEMPLATES:
            raise TunelabError(f"unknown template '{self.name}' (choose from {', '.join(TEMPLATES)})",
                               field="data.template")

    def render(self, instruction: str, input: str = "") -> str:
        text = instruction
        if self.instruction_prefix:
            text = f"{self.instruction_prefix.rstrip()} {text}" if not self.instruction_prefix.endswith(
                "\n") else self.instruction_prefix + text
        if self.cot:
            text += COT_SUFFIX
        no_input, with_input = TEMPLATES[self.name]
        return (with_input if input else no_input).format(instruction=text, input=input)

    def chat_template(self) -> str:
        """A Jinja chat template equivalent to render(): the last user message becomes the instruction,
        an optional system message is ignored, and an assistant message is followed by EOS.
        `none` (no prefix or CoT) concatenates the contents instead: a continuation model has no turns."""
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


TEMPLATE_FILE = "tunelab_template.json"


def save_template(template: PromptTemplate, directory) -> None:
    """Write the template beside a saved tokenizer so evaluation and serving format prompts the same way."""
    import json
    from pathlib import Path
    spec = {"name": template.name, "instruction_prefix": template.instruction_prefix, "cot": template.cot}
    Path(directory, TEMPLATE_FILE).write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n",
                                              encoding="utf-8")


def load_template(directory) -> PromptTemplate | None:
    """The template saved with a model directory, or None if it has none."""
    import json
    from pathlib import Path
    p = Path(directory, TEMPLATE_FILE)
    if not p.exists():
        return None
    spec = json.loads(p.read_text(encoding="utf-8"))
    return PromptTemplate(spec["name"], spec.get("instruction_prefix", ""), bool(spec.get("cot", False)))
