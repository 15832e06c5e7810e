"""The argument types and flag groups several verb groups share: one definition each, so `--device` or a
bounded integer means the same on every verb that takes it (argparse's own `type=int` accepted -1 and 70000)."""

from __future__ import annotations

import argparse
import functools
from typing import Callable

from tunelab.errors import TunelabError


def add_placement(p: argparse.ArgumentParser) -> None:
    """--device and --precision, the same on every verb that loads a model (`tunelab.model.device`)."""
    from tunelab.model.device import DEVICE_HELP
    p.add_argument("--device", default=None, help=DEVICE_HELP + " (auto: this machine's GPU, else the CPU)")
    p.add_argument("--precision", "--dtype", dest="precision", default="auto",
                   choices=["auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32"],
                   help="auto: bf16 on a GPU that does it natively, fp16 on older GPUs, fp32 on a CPU")


def add_engine(p: argparse.ArgumentParser) -> None:
    """--engine, --engine-url, --engine-python and the started server's two settings users most need: which engine
    decodes (a recipe's `engine:` section), the same on every verb that generates."""
    p.add_argument("--engine", choices=["embedded", "vllm"], default=None,
                   help="embedded: tunelab's own (the default, nothing to install); vllm: vLLM's OpenAI server, the "
                        "base loaded once and each checkpoint's adapter by name (docs/serving.md)")
    p.add_argument("--engine-url", default=None, metavar="URL",
                   help="--engine vllm: a vLLM server already running (http://host:port); else tunelab starts one")
    p.add_argument("--engine-python", default=None, metavar="PYTHON",
                   help="--engine vllm: the interpreter to start vLLM from (default: $TUNELAB_VLLM_PYTHON, vLLM in "
                        "this interpreter, else .venv-vllm/bin/python)")
    p.add_argument("--engine-max-lora-rank", type=integer(1), default=None, metavar="R",
                   help="--engine vllm: the largest adapter rank the started server takes (default 16; a checkpoint "
                        "of a higher rank is not served through vLLM)")
    p.add_argument("--engine-gpu-memory-utilization", type=number(0, 1, low_included=False), default=None,
                   metavar="F", help="--engine vllm: the share of GPU memory (on a CPU: of host memory) the started "
                                     "server reserves (default: vLLM's on a GPU, 0.2 on a CPU)")


def engine_from_flags(args: argparse.Namespace):
    """The `engine:` section the flags give (None when they give none)."""
    from tunelab.recipe.engine import EngineConfig
    settings = {"max_lora_rank": args.engine_max_lora_rank,
                "gpu_memory_utilization": args.engine_gpu_memory_utilization}
    settings = {k: v for k, v in settings.items() if v is not None}
    if args.engine is None and args.engine_url is None and args.engine_python is None and not settings:
        return None
    try:
        return EngineConfig(kind=args.engine or "vllm", url=args.engine_url, python=args.engine_python, **settings)
    except ValueError as e:   # pydantic's: its message, shown as the flags' (its last line is a help URL)
        errors = getattr(e, "errors", None)
        message = errors()[0]["msg"].removeprefix("Value error, ") if errors else str(e)
        raise TunelabError(message, field="--engine") from None


def add_ckpt_inputs(p: argparse.ArgumentParser) -> None:
    """--mindformers-config and --tokenizer: what a MindFormers .ckpt as the model needs beside it, the same on
    every verb that loads one (a recipe's model.mindformers_config and model.tokenizer)."""
    p.add_argument("--mindformers-config", default=None, metavar="YAML",
                   help="a MindFormers .ckpt model: its MindFormers YAML (model_config gives the shapes)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="a MindFormers .ckpt model: the tokenizer directory (default: tokenizer files beside the "
                        ".ckpt)")


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.lr=3e-4 (repeatable)")


def integer(low: int, high: int | None = None, what: str = "an integer"):
    """An argparse type: an integer from `low` (up to `high`). A negative --limit sliced from the end, silently;
    --port 70000 reached the socket and ended in a traceback."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from err
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return parse


def count(low: int):
    """An argparse type: an integer from `low` up to 4 x the CPU count (at least 64). Each one is a process or
    thread: --workers 100000 forked until the machine gave out."""
    import os
    return integer(low, max(64, 4 * (os.cpu_count() or 1)))


port = integer(0, 65535, "a port number")   # 0: any free port


def number(low: float, high: float = float("inf"), low_included: bool = True):
    """An argparse type: a finite number from `low` (included or not) up to `high` (--max-shard-gb nan reached
    int() and ended in a traceback)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
        if not ((low <= value if low_included else low < value) and value <= high and value < float("inf")):
            above = f"at least {low:g}" if low_included else f"above {low:g}"
            bounds = f"{above} and at most {high:g}" if high < float("inf") else f"{above} and finite"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return parse


positive = number(0, low_included=False)


def add_corpus_reading(p: argparse.ArgumentParser) -> None:
    """Reading and cleaning flags shared by `data corpus` and `tokenizer train` (same documents for both)."""
    p.add_argument("--text-field", default="text", help="JSON field / column holding the text (default: text)")
    p.add_argument("--hf-config", default=None, help="hf:NAME inputs: the dataset's configuration (subset)")
    p.add_argument("--hf-split", default="train", help="hf:NAME inputs: the split read (default: train)")
    p.add_argument("--id-field", default="id", help="JSON field kept as the document id ('' for none)")
    p.add_argument("--title-field", default="title", help="JSON field kept as the title ('' for none)")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out (by document)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--skip-bad", action="store_true", help="count and report bad lines instead of stopping")
    p.add_argument("--workers", type=count(1), default=None, help="worker processes (default: CPU count)")
    g = p.add_argument_group("cleaning (each rule is counted in the summary)")
    g.add_argument("--no-split-title", action="store_true", help="keep a '标题\\n\\n' header line in the text")
    g.add_argument("--prepend-title", action="store_true", help="put the title back in front as '标题\\n'")
    g.add_argument("--no-empty-brackets", action="store_true", help="keep empty pairs such as （） 《》")
    g.add_argument("--no-markup", action="store_true", help="keep HTML/wiki markup remnants")
    g.add_argument("--no-whitespace", action="store_true", help="keep whitespace as it is")
    g.add_argument("--nfkc", action="store_true", help="Unicode NFKC (full-width → half-width; off by default)")
    g.add_argument("--min-chars", type=int, default=10, help="drop documents shorter than this (default 10)")
    g.add_argument("--no-dedup", action="store_true", help="keep exact duplicate documents")


def as_flag(error: TunelabError, fields: dict[str, str], words: dict[str, str] | None = None) -> TunelabError:
    """A library error named by the flags that set what it names: its field (`fields`: `limit` -> `--limit`),
    and a message that starts with an argument's name (`words`: `vocab_size must be …` -> `--vocab-size must
    be …`). The library names what a Python caller passed, the command line what the user typed. Any other
    error as it is."""
    words = words or {}
    head, sep, rest = error.message.partition(" ")
    if error.field not in fields and head not in words:
        return error
    message = words[head] + sep + rest if head in words else error.message
    return TunelabError(message, file=error.file, line=error.line, field=fields.get(error.field, error.field),
                        resumable=error.resumable)


Handler = Callable[[argparse.Namespace], int]


def flags_for(fields: dict[str, str], words: dict[str, str] | None = None) -> Callable[[Handler], Handler]:
    """A handler whose library errors are shown with the flags that set what they name (`as_flag`)."""
    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except TunelabError as e:
                shown = as_flag(e, fields, words)
                if shown is e:
                    raise
                raise shown from e
        return run
    return decorate


NAMING = "see 'Naming a model' in docs/cli.md"


def add_model(p: argparse.ArgumentParser, what: str, *, many: bool = False, then: str | None = None,
              dest: str = "model", optional: bool = False) -> None:
    """The model a verb works on, as MODEL or as --model MODEL, the same on every verb that takes one: the verbs
    grew with one spelling each (`eval --model M`, `serve M`) and users had to remember which. `ModelParser`
    merges the two into `args.<dest>` after parsing (`name_model`). `what`: the kinds of model this verb loads;
    `many`: a list (`ui`); `then`: the positional list that follows MODEL (`generate`'s prompts), which takes
    the positional word when --model names the model; `dest`: the handler's name for it (`args.run`); `optional`:
    the verb works without one (`ui`: its Runs and Train tabs need no model)."""
    if many:
        p.add_argument(dest, nargs="*", default=[], metavar="MODEL", help=f"{what} (repeatable); {NAMING}")
        p.add_argument("--model", dest="model_flag", action="append", default=[], metavar="MODEL",
                       help="a model as a flag, the same as MODEL (repeatable)")
    else:
        p.add_argument(dest, nargs="?", default=None, metavar="MODEL", help=f"{what}; {NAMING}")
        p.add_argument("--model", dest="model_flag", default=None, metavar="MODEL",
                       help="the model as a flag, the same as MODEL" + (
                           f" (then every positional word is a {then[:-1]})" if then else ""))
    p.set_defaults(model_then=then, model_dest=dest, model_optional=optional)


def name_model(args: argparse.Namespace, prog: str = "tunelab VERB") -> None:
    """The verb's model from MODEL and --model (`add_model`): either one; both only when they agree; neither is
    an error (`prog`: the verb as the user typed it). A verb without `add_model` is left as it is."""
    if not hasattr(args, "model_flag"):
        return
    dest, flag, then, optional = args.model_dest, args.model_flag, args.model_then, args.model_optional
    word = getattr(args, dest)
    del args.model_flag, args.model_then, args.model_dest, args.model_optional
    if isinstance(flag, list):      # several models: the flags' and the words', each once
        model = list(dict.fromkeys([*flag, *word]))
    else:
        if flag is not None and word is not None and word != flag and then:
            getattr(args, then).insert(0, word)  # `generate --model M hello`: hello is a prompt
            word = None
        if flag is not None and word is not None and word != flag:
            raise TunelabError(f"two different models: '{word}' and --model '{flag}'; give one", field="--model")
        model = flag if flag is not None else word
    setattr(args, dest, model)
    if not model and not optional:
        raise TunelabError(f"no model given: {prog} MODEL, or --model MODEL ({NAMING})", field="--model")


class ModelParser(argparse.ArgumentParser):
    """An argument parser whose result names the model once (`name_model`), whether the user typed it as
    MODEL or --model: every caller of `parse_args` (main, tests, the docs generator) sees the same `args.model`.
    Verb parsers are made by `add_subparsers` with the root parser's class, so each verb is this class too."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 — argparse's own signature
        if self._inner or "model_dest" not in self._defaults:
            return super().parse_known_args(args, namespace)
        # MODEL is optional (--model may name it), so positionals after it (`export RUN OUT`) would be matched in
        # the first run of words: `export RUN --dtype float32 OUT` would give OUT to nobody. Intermixed parsing
        # takes the options out first and then matches every positional word, wherever it stood.
        self._inner = True
        try:
            namespace, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False
        if not extras:  # else the root parser stops at the unknown words, a clearer error than a missing model
            name_model(namespace, self.prog)
        return namespace, extras
