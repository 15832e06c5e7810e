"""A chat model's own template, as the renderer of prompts and of training labels.

A pretrained chat model (Llama-3-Instruct, Qwen2.5-Instruct, SmolLM2-Instruct, Gemma-it) was taught one format;
asked in another it is measured on a format it never saw. So with `data.template: model` every prompt tunelab
builds — training rows, the base's and every checkpoint's evaluation, DPO pairs, GRPO rollouts, serving — is the
tokenizer's own `apply_chat_template`, and nothing else.

Which tokens an assistant turn trains (`assistant_labels`), for any template and without the `{% generation %}`
tags TRL needs: the tokens the model must write after the generation prompt, i.e. those of
`apply_chat_template(conv[:i+1])` after those of `apply_chat_template(conv[:i], add_generation_prompt=True)`, and
the input ids are `apply_chat_template(conv)` exactly. That holds only when every earlier rendering is a token
prefix of the later ones; a template that rewrites earlier turns (Qwen3 drops earlier reasoning) breaks it, and
that is one error naming the template and the turn, with `data.loss_on: last_turn` as the way out.
"""

from __future__ import annotations

from typing import Any

from tunelab.errors import TunelabError

# the label no loss counts (PyTorch cross-entropy's ignore_index, as transformers uses it): the one definition;
# packing, the losses and data check take it from here (or from data.packing, which imports it)
IGNORE = -100
LOSS_ON = ("assistant", "last_turn", "all")


def template_name(tokenizer) -> str:
    """A short name for errors: the tokenizer's model, else its class."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


class ModelChat:
    """The tokenizer's chat template with the run's settings: a system prompt (`system`, used when a conversation
    has none; without either the template's own default stays), and extra template variables (`kwargs`, e.g. a
    fixed `date_string`, recorded in the run so the template renders the same tomorrow)."""

    def __init__(self, tokenizer, system: str = "", kwargs: dict[str, Any] | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise TunelabError(f"template 'model': the tokenizer of {template_name(tokenizer)} has no chat template "
                               "(name one of tunelab's: alpaca, plain, qa, none, sep)", field="data.template")
        self.tokenizer = tokenizer
        self.system = system
        self.kwargs = dict(kwargs or {})

    def with_system(self, messages: list[dict]) -> list[dict]:
        if self.system and not (messages and messages[0].get("role") == "system"):
            return [{"role": "system", "content": self.system}, *messages]
        return list(messages)

    def text(self, messages: list[dict], add_generation_prompt: bool, tools: list | None = None,
             where: str = "") -> str:
        """The conversation rendered by the template (a system prompt added as above)."""
        try:
            out = self.tokenizer.apply_chat_template(self.with_system(messages), tokenize=False,
                                                     add_generation_prompt=add_generation_prompt, tools=tools,
                                                     **self.kwargs)
        except TunelabError:
            raise
        except Exception as e:  # noqa: BLE001 - jinja's errors (raise_exception, undefined names) are the user's
            raise TunelabError(f"the chat template of {template_name(self.tokenizer)} fails{where}: {e}",
                               field="data.template") from e
        if not isinstance(out, str):
            raise TunelabError(f"the chat template of {template_name(self.tokenizer)} rendered no text{where}",
                               field="data.template")
        return out

    def ids(self, texts: list[str]) -> list[list[int]]:
        # the template writes BOS itself where the model has one: never a second
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def encode(self, messages: list[dict], loss_on: str = "assistant", tools: list | None = None,
               where: str = "") -> tuple[list[int], list[int]]:
        """(input ids, labels) of one conversation: ids = `apply_chat_template(conv)`; labels IGNORE except on the
        assistant turns `loss_on` names (`assistant`: every one; `last_turn`: the last; `all`: every token)."""
        return assistant_labels(self, messages, loss_on, tools, where)


def assistant_labels(chat: ModelChat, messages: list[dict], loss_on: str = "assistant", tools: list | None = None,
                     where: str = "") -> tuple[list[int], list[int]]:
    """See the module docstring: the reference and the prefix check. `where` names the example in errors."""
    if loss_on not in LOSS_ON:
        raise TunelabError(f"unknown loss_on '{loss_on}' (choose from {', '.join(LOSS_ON)})", field="data.loss_on")
    turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if loss_on == "last_turn":
        turns = turns[-1:]
    rendered: dict[tuple[int, bool], str] = {}

    def render(end: int, prompt: bool) -> str:
        """messages[:end] rendered once however often it is asked for (the conversation ending in an assistant
        turn is that turn's own rendering too: 1 + 2 × turns renders became 2 × turns)."""
        if (end, prompt) not in rendered:
            rendered[end, prompt] = chat.text(messages[:end], prompt, tools, where) if end else ""
        return rendered[end, prompt]

    texts = [render(len(messages), False)]
    if loss_on != "all":
        for i in turns:
            texts += [render(i, True), render(i + 1, False)]
    unique = list(dict.fromkeys(texts))  # each text tokenised once too
    tokenized = dict(zip(unique, chat.ids(unique)))
    ids = [tokenized[t] for t in texts]
    full = list(ids[0])
    if loss_on == "all":
        return full, list(full)
    labels = [IGNORE] * len(full)
    for k, i in enumerate(turns):
        before, upto = ids[1 + 2 * k], ids[2 + 2 * k]
        if upto[: len(before)] != before or full[: len(upto)] != upto:
            name = template_name(chat.tokenizer)
            if loss_on == "last_turn":
                raise TunelabError(
                    f"the chat template of {name} does not render the last assistant turn{where} after its own "
                    "generation prompt (the prompt writes what the turn's rendering does not hold, e.g. a reasoning "
                    "opener), so its tokens cannot be told apart: train every token (data.loss_on: all) or use "
                    "another template", field="data.loss_on")
            raise TunelabError(
                f"the chat template of {name} does not render the conversation{where} as a growing prefix at turn "
                f"{i} ({messages[i].get('role')}): an earlier rendering is not the start of the later one (the "
                "template rewrites earlier turns), so the tokens of this turn cannot be told apart; train the last "
                "turn only (data.loss_on: last_turn)", field="data.loss_on")
        labels[len(before): len(upto)] = full[len(before): len(upto)]
    return full, labels
