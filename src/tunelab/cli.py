"""The `tunelab` command: verbs only. Each verb parses its arguments and calls one stage function.

Stage modules are imported lazily so verbs that need no model (--help, score, grade) start fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import sys

from tunelab import __version__
from tunelab.errors import TunelabError


def _call(target: str):
    """Return a handler that imports `module:function` only when the verb runs."""
    def handler(args: argparse.Namespace) -> int | None:
        module, func = target.split(":")
        return getattr(importlib.import_module(module), func)(args)
    return handler


def _add_placement(p: argparse.ArgumentParser) -> None:
    """--device and --precision, the same on every verb that loads a model (`tunelab.model.device`)."""
    from tunelab.model.device import DEVICE_HELP
    p.add_argument("--device", default=None, help=DEVICE_HELP + " (auto: this machine's GPU, else the CPU)")
    p.add_argument("--precision", "--dtype", dest="precision", default="auto",
                   choices=["auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32"],
                   help="auto: bf16 on a GPU that does it natively, fp16 on older GPUs, fp32 on a CPU")


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.lr=3e-4 (repeatable)")


def _integer(low: int, high: int | None = None, what: str = "an integer"):
    """An argparse type: an integer from `low` (up to `high`). A negative --limit sliced from the end, silently;
    --port 70000 reached the socket and ended in a traceback."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return parse


def _count(low: int):
    """An argparse type: an integer from `low` up to 4 x the CPU count (at least 64). Each one is a process or
    thread: --workers 100000 forked until the machine gave out."""
    import os
    return _integer(low, max(64, 4 * (os.cpu_count() or 1)))


_port = _integer(0, 65535, "a port number")   # 0: any free port


def _number(low: float, high: float = float("inf"), low_included: bool = True):
    """An argparse type: a finite number from `low` (included or not) up to `high` (--max-shard-gb nan reached
    int() and ended in a traceback)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ((low <= value if low_included else low < value) and value <= high and value < float("inf")):
            above = f"at least {low:g}" if low_included else f"above {low:g}"
            bounds = f"{above} and at most {high:g}" if high < float("inf") else f"{above} and finite"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return parse


_positive = _number(0, low_included=False)


def _add_corpus_reading(p: argparse.ArgumentParser) -> None:
    """Reading and cleaning flags shared by `data corpus` and `tokenizer train` (same documents for both)."""
    p.add_argument("--text-field", default="text", help="JSON field holding the text (default: text)")
    p.add_argument("--id-field", default="id", help="JSON field kept as the document id ('' for none)")
    p.add_argument("--title-field", default="title", help="JSON field kept as the title ('' for none)")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out (by document)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--skip-bad", action="store_true", help="count and report bad lines instead of stopping")
    p.add_argument("--workers", type=_count(1), default=None, help="worker processes (default: CPU count)")
    g = p.add_argument_group("cleaning (each rule is counted in the summary)")
    g.add_argument("--no-split-title", action="store_true", help="keep a '标题\\n\\n' header line in the text")
    g.add_argument("--prepend-title", action="store_true", help="put the title back in front as '标题\\n'")
    g.add_argument("--no-empty-brackets", action="store_true", help="keep empty pairs such as （） 《》")
    g.add_argument("--no-markup", action="store_true", help="keep HTML/wiki markup remnants")
    g.add_argument("--no-whitespace", action="store_true", help="keep whitespace as it is")
    g.add_argument("--nfkc", action="store_true", help="Unicode NFKC (full-width → half-width; off by default)")
    g.add_argument("--min-chars", type=int, default=10, help="drop documents shorter than this (default 10)")
    g.add_argument("--no-dedup", action="store_true", help="keep exact duplicate documents")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunelab",
        description="Fine-tune, evaluate and score LLMs: data → model → train → eval → score.")
    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    # run / train ---------------------------------------------------------------------------------
    p = verbs.add_parser("run", help="run a whole recipe: data → train → eval → score → report")
    p.add_argument("recipe")
    _add_set(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.set_defaults(func=_call("tunelab.pipeline:cli_run"))

    p = verbs.add_parser("train", help="train only (no evaluation)")
    p.add_argument("recipe")
    _add_set(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.set_defaults(func=_call("tunelab.pipeline:cli_train"))

    p = verbs.add_parser("plan", help="will this run fit the GPU? the per-device memory of one training step, "
                                      "traced without weights or a GPU; exit 1 when it does not fit")
    p.add_argument("recipe")
    _add_set(p)
    p.add_argument("--gpu-memory", default="24GiB", metavar="SIZE",
                   help="memory of one GPU: 24GiB, 24GB, 80G, 16384MiB (GB = GiB, as nvidia-smi counts; default 24GiB)")
    p.add_argument("--gpus", type=_integer(1), default=1, help="GPUs the run uses (DDP: a whole replica on each)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_plan)

    # data ----------------------------------------------------------------------------------------
    p = verbs.add_parser("data", help="generate, convert and inspect training data")
    data = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)

    q = data.add_parser("arithmetic", help="generate competition-format arithmetic problems, or subsample a file")
    q.add_argument("--out", help="output file (.json array or .jsonl); required unless --list-kinds")
    q.add_argument("--count", type=int, default=1000, help="number of problems to write")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--kinds", default=None,
                   help="comma-separated kinds (default: all); see --list-kinds")
    q.add_argument("--lang", choices=["zh", "en", "mix"], default="mix")
    q.add_argument("--from", dest="source", default=None,
                   help="subsample COUNT problems reproducibly from this file instead of generating")
    q.add_argument("--list-kinds", action="store_true", help="print the kinds and exit")
    # the generator's difficulty options, as a recipe's `options:` sets them (recipes/quickstart.yaml)
    q.add_argument("--int-digits", type=int, default=None, help="max digits of an operand's integer part (1-18; "
                   "default 4)")
    q.add_argument("--decimals", type=int, default=None, help="decimal places of dec_* operands, and rounding places "
                   "of inexact results (1-10; default 2)")
    q.add_argument("--fixed-decimals", action=argparse.BooleanOptionalAction, default=None,
                   help="every decimal operand has exactly --decimals places (default: up to)")
    q.add_argument("--signed", action=argparse.BooleanOptionalAction, default=None,
                   help="allow negative operands (default: yes)")
    q.set_defaults(func=_call("tunelab.data.generate.arithmetic:cli_generate"))

    q = data.add_parser("encyclopedia", help="Chinese encyclopedia-style articles of an invented world, with QA pairs")
    q.add_argument("--out", required=True, help="new directory for articles.jsonl and qa.jsonl")
    q.add_argument("--count", type=int, default=5000, help="number of articles")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--no-noise", action="store_true",
                   help="no wiki-dump noise (empty brackets, markup, stray whitespace, duplicates)")
    q.set_defaults(func=_call("tunelab.data.generate.encyclopedia:cli_generate"))

    q = data.add_parser("qa-split", help="QA pairs split as a corpus split their articles: train.jsonl for "
                                         "fine-tuning, val.jsonl held out")
    q.add_argument("qa", nargs="+", help="JSONL files of {question, answer, source_id} (source_id: a corpus doc id)")
    q.add_argument("--corpus", required=True, help="the prepared corpus whose document split decides")
    q.add_argument("--out", required=True, help="new directory for train.jsonl, val.jsonl and summary.json")
    q.set_defaults(func=_call("tunelab.data.generate.encyclopedia:cli_split_qa"))

    q = data.add_parser("convert", help="convert competition data to a training format")
    q.add_argument("input", help="competition JSON/JSONL ({problem, solution})")
    q.add_argument("--out", required=True)
    q.add_argument("--format", choices=["conversations", "alpaca", "messages"], default="conversations")
    q.add_argument("--template", default="alpaca", help="prompt template for the conversations format")
    q.add_argument("--instruction-prefix", default="",
                   help='e.g. "You are an expert in mathematics, accurately calculating the following problem."')
    q.add_argument("--cot", action="store_true", help="append the zero-shot \"Let's think step by step.\"")
    q.set_defaults(func=_call("tunelab.data.convert:cli_convert"))

    q = data.add_parser("check", help="show rendered samples, loss tokens, lengths and packing efficiency")
    q.add_argument("recipe")
    _add_set(q)
    q.add_argument("--samples", type=_integer(0), default=3)
    q.set_defaults(func=_call("tunelab.data_check:cli_check"))

    q = data.add_parser("glue", help="GLUE CoLA/QQP TSVs to pre_data/{task}/{task}_{train,val,dev}.json")
    q.add_argument("--task", required=True, type=str.strip, metavar="CoLA|QQP")
    q.add_argument("--data-dir", required=True, help="folder with train.tsv and dev.tsv (or a GLUE root)")
    q.add_argument("--out", default="pre_data", help="output root (default: pre_data)")
    q.add_argument("--limit", type=_integer(1), default=None, help="sample this many training rows (default: all)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--instruction", default=None, help="instruction text (default: the task's, see docs)")
    q.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the sampled training rows held out as {task}_val.json")
    q.set_defaults(func=_call("tunelab.data.glue:cli_data"))

    q = data.add_parser("corpus", help="pretraining corpus: clean, split into sentence-aligned token blocks; "
                                       "--verify / --show a prepared one")
    q.add_argument("inputs", nargs="*", metavar="INPUT", help=".jsonl/.json/.txt files (or .gz) or folders")
    q.add_argument("--tokenizer", help="Hugging Face tokenizer directory (e.g. from `tunelab tokenizer train`)")
    q.add_argument("--block-size", type=int, help="tokens per block at most, the final EOT included")
    q.add_argument("--out", help="new corpus directory")
    q.add_argument("--verify", metavar="DIR", help="re-read the inputs of DIR and prove no character was lost")
    q.add_argument("--show", metavar="DIR", help="print blocks of DIR as JSON lines (decoded)")
    q.add_argument("--doc", default=None, help="--show: only this document (id, or index in docs.jsonl)")
    q.add_argument("--split", choices=["train", "val"], default=None, help="--show: only this split")
    q.add_argument("--limit", type=_integer(1), default=20, help="--show: at most this many blocks (default 20)")
    _add_corpus_reading(q)
    q.set_defaults(func=_call("tunelab.data.corpus.prepare:cli_corpus"))

    # tokenizer -----------------------------------------------------------------------------------
    p = verbs.add_parser("tokenizer", help="train a tokenizer for from-scratch models")
    tok = p.add_subparsers(dest="tokenizer_verb", metavar="ACTION", required=True)
    q = tok.add_parser("train", help="byte-level BPE on the cleaned corpus (CJK-aware, digits split, EOT/PAD/SEP)")
    q.add_argument("inputs", nargs="+", metavar="INPUT", help=".jsonl/.json/.txt files (or .gz) or folders")
    q.add_argument("--vocab-size", type=int, required=True)
    q.add_argument("--out", required=True, help="new tokenizer directory")
    _add_corpus_reading(q)
    q.set_defaults(func=_call("tunelab.model.tokenizer:cli_train_tokenizer"))

    # eval / grade --------------------------------------------------------------------------------
    p = verbs.add_parser("eval", help="evaluate a model, checkpoint or run directory on tasks")
    p.add_argument("--model", required=True, help="run directory, checkpoint, HF directory or hub id")
    p.add_argument("--tasks", default="arithmetic", help="comma-separated task names")
    p.add_argument("--data", action="append", default=[], metavar="TASK=FILE",
                   help="data file for a task, or a prepared corpus directory for ppl/continuation (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="the first N examples of each task (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--out", default=None, help="output directory (default: <model>/eval-<tasks>)")
    p.add_argument("--mode", default=None, metavar="MODE|TASK=MODE,…",
                   help="a mode for every task that has it, the others run their own default (loglik: choice, "
                        "cola and qqp score options/labels by log-likelihood, the rest generate); or per task: "
                        "--mode choice=loglik,cola=generate (a mode the task lacks is an error)")
    p.add_argument("--baseline", default=None, metavar="BASE_MODEL_OR_RESULTS_JSON",
                   help="report ability metrics (squad, reading: f1, exact_match) as %% of this base's")
    p.add_argument("--retention-threshold", type=float, default=0.9, help="PASS at this fraction (0.9)")
    p.add_argument("--segmentation", choices=["auto", "char", "jieba", "word"], default=None,
                   help="Rouge-L tokens for rougel and continuation (default auto: char for Chinese, else word)")
    p.add_argument("--window", type=int, default=None, help="ppl: tokens per window (default: model context)")
    p.add_argument("--stride", type=int, default=None, help="ppl: window start step (default: window/2)")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="TASK.KEY=VALUE",
                   help="a task setting, e.g. choice.continuation=text, ppl.documents=file (repeatable)")
    _add_placement(p)
    p.set_defaults(func=_call("tunelab.eval.evaluate:cli_eval"))

    p = verbs.add_parser("predict", help="GLUE hand-in file: first N dev predictions, one 0/1 label per line")
    p.add_argument("--model", required=True, help="run directory (best checkpoint), checkpoint, HF dir or hub id")
    p.add_argument("--task", required=True, type=str.strip, metavar="CoLA|QQP")
    p.add_argument("--data", required=True, help="dev/test TSV or pre_data {task}_dev.json")
    p.add_argument("--limit", type=int, default=150, help="first N examples (default 150; 0 = all)")
    p.add_argument("--mode", choices=["generate", "loglik"], default="generate",
                   help="loglik compares the two label continuations: no parsing")
    p.add_argument("--out", default="result_{task}.txt")
    p.add_argument("--label-words", default=None, metavar="W0,W1", help="loglik label words (default 0,1)")
    p.add_argument("--strict", action="store_true", help="an unparseable generation is an error")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=8)
    _add_placement(p)
    p.set_defaults(func=_call("tunelab.eval.predict:cli_predict"))

    p = verbs.add_parser("grade", help="grade a prediction file against gold answers")
    grade = p.add_subparsers(dest="task", metavar="TASK", required=True)
    q = grade.add_parser("arithmetic", help="numeric comparison of final answers, with diagnostics")
    q.add_argument("--pred", required=True, help="JSONL with 'prediction' (and 'id'), or one answer per line")
    q.add_argument("--gold", required=True, help="competition JSON/JSONL with 'solution' (and 'id')")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_call("tunelab.tasks.arithmetic:cli_grade"))

    q = grade.add_parser("squad", help="SQuAD v1.1 exact match and F1 (official, cmrc, mindformers scorers)")
    q.add_argument("--pred", required=True, help="official prediction JSON {question_id: answer}")
    q.add_argument("--gold", required=True, help="SQuAD v1.1 JSON (e.g. dev-v1.1.json)")
    q.add_argument("--scorer", choices=["auto", "official", "cmrc", "mindformers", "all"], default="auto",
                   help="auto: cmrc for Chinese gold, else official; all: the three side by side")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_call("tunelab.tasks.squad:cli_grade"))

    q = grade.add_parser("choice", help="multiple choice: extract the chosen letter, accuracy")
    q.add_argument("--pred", required=True, help="JSONL with 'prediction' (and 'id'), or one answer per line")
    q.add_argument("--gold", required=True,
                   help="questions {question, A..D or choices, answer} or alpaca records, JSON/JSONL")
    q.add_argument("--ratio", type=float, default=None, help="also print the stage-2 score for this ratio")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_call("tunelab.tasks.choice:cli_grade"))

    q = grade.add_parser("glue", help="GLUE CoLA/QQP labels: accuracy, MCC/F1 and the exam rubric")
    q.add_argument("--task", required=True, type=str.strip, metavar="CoLA|QQP")
    q.add_argument("--pred", required=True, help="one generated label per line (e.g. result_CoLA.txt)")
    q.add_argument("--gold", required=True, help="one label per line, a labelled GLUE TSV or pre_data JSON")
    q.add_argument("--pre-data", default=None, help="pre_data folder to check for the rubric (10 points)")
    q.add_argument("--model-dir", default=None, help="saved model folder to check for the rubric (20 points)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_call("tunelab.tasks.glue:cli_grade"))

    p = verbs.add_parser("export", help="merge a run's best (or last) checkpoint into a standalone HF model")
    p.add_argument("run", help="run directory, checkpoint or adapter directory")
    p.add_argument("out", help="new output directory")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--format", choices=["hf", "mindspore", "both"], default="hf",
                   help="mindspore: MindFormers model.ckpt + model_config.yaml instead of safetensors; both: "
                        "the HF directory plus mindspore/")
    p.set_defaults(func=_call("tunelab.model.export:cli_export"))

    p = verbs.add_parser("convert", help="Hugging Face directory <-> MindFormers .ckpt (Llama-2/3, InternLM)")
    p.add_argument("input", help="HF model directory, or a MindFormers .ckpt")
    p.add_argument("output", help="a new .ckpt (from HF), or a new HF directory (from .ckpt)")
    p.add_argument("--config", default=None,
                   help=".ckpt -> HF: the MindFormers YAML (model.model_config), or an HF config.json/directory")
    p.add_argument("--tokenizer", default=None, help=".ckpt -> HF: copy the tokenizer files of this HF directory")
    p.add_argument("--dtype", choices=["keep", "bfloat16", "float16", "float32"], default="keep")
    p.add_argument("--qkv-concat", action="store_true",
                   help="HF -> .ckpt: fused w_qkv / w_gate_hidden, for a MindFormers YAML with qkv_concat: True")
    p.add_argument("--max-shard-gb", type=_positive, default=5.0, help=".ckpt -> HF: safetensors shard size")
    p.set_defaults(func=_call("tunelab.model.mindformers_convert:cli_convert"))

    p = verbs.add_parser("handin", help="the competition submission: five merged checkpoints, configs, logs, "
                                        "predictions, report, environment, description, checksums")
    p.add_argument("run", help="a finished run directory (tunelab run)")
    p.add_argument("--out", required=True, help="new bundle directory")
    p.add_argument("--format", choices=["mindspore", "hf", "both"], default="mindspore",
                   help="checkpoint format: MindFormers .ckpt (default), HF safetensors, or both")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--base-packages", default=None, metavar="FILE",
                   help="pip freeze of the organisers' base image: environment.txt lists only the additions")
    p.set_defaults(func=_call("tunelab.handin:cli_handin"))

    p = verbs.add_parser("runs", help="what is in run directories")
    runs = p.add_subparsers(dest="runs_verb", metavar="ACTION", required=True)
    q = runs.add_parser("check", help="each checkpoint of a run: whole, damaged, unfinished or set aside "
                                      "(checksums verified); exit 1 if one is damaged")
    q.add_argument("run", help="run directory")
    q.set_defaults(func=_runs_check)

    # ratio / score -------------------------------------------------------------------------------
    p = verbs.add_parser("ratio", help="trainable / total parameters of a LoRA setup (meta device, no weights)")
    p.add_argument("model", help="preset name, local HF directory or config.json")
    p.add_argument("--lora-rank", type=int, required=True)
    p.add_argument("--lora-target", required=True,
                   help="regex or comma list; MindFormers names (wq|wv|wo, w1..w3) are accepted")
    p.add_argument("--total-params", type=float, default=None,
                   help="divide by this nominal total instead (the competition used 8.03e9 for Llama-3-8B)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_call("tunelab.scoring:cli_ratio"))

    p = verbs.add_parser("score", help="competition score from accuracy and low-parameter ratio")
    p.add_argument("--formula", choices=["stage1", "stage2"], default="stage1")
    p.add_argument("--accuracy", required=True, help="0.7161 or 71.61%%")
    p.add_argument("--ratio", required=True, type=float)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_call("tunelab.scoring:cli_score"))

    # serve / ui ----------------------------------------------------------------------------------
    p = verbs.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (batched)")
    p.add_argument("model", help="run directory (best checkpoint), checkpoint, model or adapter directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or env TUNELAB_API_KEY)")
    p.add_argument("--max-batch", type=_integer(1), default=16, help="most sequences decoded together")
    p.add_argument("--max-request-bytes", type=int, default=2_000_000,
                   help="larger request bodies are refused with 413 before they are read further")
    p.add_argument("--max-sequences", type=int, default=64, help="most sequences (prompts × n) in one request")
    p.add_argument("--name", default=None, help="model id clients use (default: run/checkpoint name)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint of a run")
    _add_placement(p)
    p.add_argument("--threads", type=_count(0), default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_call("tunelab.serve.api:cli_serve"))

    p = verbs.add_parser("ui", help="web UI: chat, side by side, anonymous arena and leaderboard")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH_OR_URL",
                   help="a local model (run/checkpoint/model dir) or an OpenAI-compatible URL such as "
                        "http://host:8000/v1, optionally URL#MODEL_ID and URL@KEY or URL@env:VAR (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=7860)
    p.add_argument("--examples", default=None, help="example prompts: .txt (one a line), .json or .jsonl")
    p.add_argument("--db", default="arena.sqlite", help="SQLite file for arena votes")
    p.add_argument("--min-votes", type=_integer(0), default=10, help="votes a model needs before it is ranked")
    p.add_argument("--max-batch", type=_integer(1), default=16, help="batch limit of each local model's engine")
    p.add_argument("--auth", default=None, metavar="USER:PASS",
                   help="require this login for the whole UI, exports included (USER:env:VAR reads the password "
                        "from VAR); without it, listening beyond localhost prints a warning")
    p.add_argument("--connect-timeout", type=float, default=3.0, help="seconds to reach a remote model")
    p.add_argument("--first-token-timeout", type=float, default=20.0,
                   help="seconds a remote model gets to send its first text")
    p.add_argument("--deadline", type=float, default=180.0, help="seconds a remote model gets for a whole answer")
    _add_placement(p)
    p.set_defaults(func=_call("tunelab.serve.ui:cli_ui"))

    p = verbs.add_parser("generate", help="text from a model in the terminal: prompts as arguments, from a file, "
                                          "piped, or typed")
    p.add_argument("model", help="run directory (best checkpoint), checkpoint, model or adapter directory")
    p.add_argument("prompts", nargs="*", metavar="PROMPT",
                   help="prompts; with none and no --file: one a line from a pipe, or typed at a '>' prompt")
    p.add_argument("--file", default=None, help="prompts: .txt (one a line), .json list or .jsonl "
                                                "(prompt|instruction|problem|question|text)")
    p.add_argument("-n", "--num-samples", type=_integer(1, 64), default=1, help="samples per prompt (default 1)")
    p.add_argument("--max-new-tokens", type=_integer(1), default=None,
                   help="default: the model's generation config, else 128")
    p.add_argument("--temperature", type=_number(0), default=None,
                   help="0: greedy (default: the model's generation config, else 1)")
    p.add_argument("--top-k", type=_integer(0), default=None, help="0: off (default: the model's, else off)")
    p.add_argument("--top-p", type=_number(0, 1, low_included=False), default=None,
                   help="nucleus sampling (default: the model's, else 1)")
    p.add_argument("--seed", type=_integer(0, 2**63 - 1 - 64), default=None,
                   help="reproducible samples: sample j of every prompt uses SEED + j")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)")
    p.add_argument("--raw", action="store_true", help="the prompt as it is, without the model's chat template")
    p.add_argument("--json", action="store_true", help="one JSON line per sample: prompt, text, finish reason, "
                                                       "token counts")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint of a run")
    p.add_argument("--max-batch", type=_integer(1), default=16, help="most sequences decoded together")
    _add_placement(p)
    p.add_argument("--threads", type=_count(0), default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=_call("tunelab.serve.generate:cli_generate"))

    # synth ---------------------------------------------------------------------------------------
    p = verbs.add_parser("synth", help="synthesise training data through any OpenAI-compatible endpoint")
    synth = p.add_subparsers(dest="synth_verb", metavar="KIND", required=True)
    q = synth.add_parser("qa", help="question–answer pairs about articles: validated, concurrent, resumable")
    q.add_argument("--corpus", nargs="+", required=True, metavar="DIR|FILE",
                   help="prepared corpus directories and/or .jsonl/.json/.txt files or folders of them")
    q.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    q.add_argument("--model", required=True, help="model id on the endpoint")
    q.add_argument("--api-key", default=None, help="KEY, or env:VAR to read it from an environment variable")
    q.add_argument("--out", required=True, help="pairs JSONL; OUT.status.jsonl and OUT.report.json beside it")
    q.add_argument("--template", default=None, help="prompt template file with {article} (default: built-in, zh)")
    q.add_argument("--system", default=None, help="system message, or @FILE")
    q.add_argument("--temperature", type=float, default=0.7)
    q.add_argument("--max-tokens", type=int, default=1024, help="most tokens of one reply")
    q.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    q.add_argument("--retries", type=int, default=3, help="extra attempts per article after an invalid reply or a "
                                                          "failed request (default 3)")
    q.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one reply (default 300)")
    q.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry of a failed "
                                                              "request, doubling (Retry-After wins)")
    q.add_argument("--retry-failed", action="store_true", help="ask again about articles recorded as failed")
    q.add_argument("--chunk-chars", type=int, default=1500, help="cut longer articles at sentence ends (default 1500)")
    q.add_argument("--min-chars", type=int, default=50, help="skip shorter articles (default 50)")
    q.add_argument("--split", default="all", help="of a prepared corpus: train, val or all (default)")
    q.add_argument("--limit", type=int, default=None, help="only the first N articles")
    q.add_argument("--text-field", default="text", help="JSON field holding the text (default: text)")
    q.add_argument("--id-field", default="id", help="JSON field used as source_id ('' for file:line)")
    q.add_argument("--title-field", default="title", help="JSON field holding the title ('' for none)")
    q.add_argument("--min-pairs", type=int, default=3, help="fewest pairs a reply may hold (default 3)")
    q.add_argument("--max-pairs", type=int, default=6, help="most pairs a reply may hold (default 6)")
    q.add_argument("--max-question-chars", type=int, default=200)
    q.add_argument("--max-answer-chars", type=int, default=500)
    q.add_argument("--min-grounding", type=float, default=0.5,
                   help="share of an answer's character bigrams that must occur in the article (default 0.5)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=_call("tunelab.synth.cli:cli_synth_qa"))
    return parser


def _runs_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tunelab.runs import check_checkpoints
    from tunelab.train.run_lock import writer_of
    checks = check_checkpoints(Path(args.run))
    width = max([len(c.name) for c in checks] + [10])
    for c in checks:
        print(f"{c.name:<{width}}  {c.status:<10}  {c.bytes / 2**20:9.1f} MiB  {c.detail}".rstrip())
    writer = writer_of(Path(args.run))
    damaged = sum(c.status == "damaged" for c in checks)
    print(f"{len(checks)} entries, {damaged} damaged; "
          + (f"being written by {writer}" if writer else "no process is writing this run"))
    return 1 if damaged else 0


def _plan(args: argparse.Namespace) -> int:
    """`tunelab plan`: 0 when the run fits the card, 1 when it does not (with the changes that would fit)."""
    from tunelab.recipe import load_recipe
    from tunelab.train.memory_plan import advise, format_plan, parse_memory_size, plan_memory, plan_to_json
    card = parse_memory_size(args.gpu_memory, field="--gpu-memory")
    recipe = load_recipe(args.recipe, args.overrides, check_data=False)  # the plan reads no data
    plan = plan_memory(recipe, card, args.gpus)
    if not plan.fits:
        plan.advice = advise(recipe, plan)
    print(json.dumps(plan_to_json(plan), indent=2) if args.json else format_plan(plan))
    return 0 if plan.fits else 1


def _log_to_stderr() -> None:
    """Warnings of the stages below (a damaged checkpoint set aside, …) as 'tunelab: …' lines on stderr."""
    import logging

    class Stderr(logging.StreamHandler):
        def emit(self, record):
            self.stream = sys.stderr  # whatever stderr is now (a test's capture, a redirected one)
            super().emit(record)

    logger = logging.getLogger("tunelab")
    if not any(type(h).__name__ == "Stderr" for h in logger.handlers):
        handler = Stderr()
        handler.setFormatter(logging.Formatter("tunelab: %(message)s"))
        logger.addHandler(handler)


def _resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """For a run that stopped resumably: the command that continues it (the verb's own words, --resume added)."""
    import shlex
    if getattr(args, "verb", None) not in ("run", "train"):
        return ""
    words = [w for w in argv if w != "--resume"]
    return f"; continue with: tunelab {' '.join(shlex.quote(w) for w in words)} --resume"


def cli_markdown() -> str:
    """Every verb's `--help`, as docs/cli.md holds it (tests/test_cli_docs.py checks the file is current):
    the parser is the source, so the reference cannot drift from what `tunelab` accepts."""
    import os
    from unittest import mock
    parts = ["# tunelab command reference", "",
             "Generated from the argument parser (`python -c \"from tunelab.cli import cli_markdown; "
             "print(cli_markdown(), end='')\" > docs/cli.md`); each verb's `--help`.", ""]

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    _log_to_stderr()
    try:
        rc = args.func(args)
    except TunelabError as e:
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
        name = str(e.filename) if e.filename is not None else ""
        where = (name[:120] + "…" if len(name) > 120 else name) + ": " if name else ""
        full = ""
        if name and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            from tunelab.records import free_space
            full = f" ({free_space(name)} free on that disk)"
        print(f"tunelab: error: {where}{e.strerror or e}{full}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
