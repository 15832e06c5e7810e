"""`tunelab export`, `convert`, `handin`, `runs check`, `runs table`, `ratio` and `score`: what is done with a model
or a run once it is trained — merged, converted, bundled for hand-in, checked, compared, measured and scored. Each
handler is one typed call (`tunelab.convert.export`, `tunelab.convert.mindformers`, `tunelab.handin`,
`tunelab.runs`, `tunelab.compare`, `tunelab.scoring`) and the printing of its result."""

from __future__ import annotations

import argparse
import json
import sys

from tunelab.cli.arguments import add_model, flags_for, integer, positive
from tunelab.errors import TunelabError

_FLAGS = {"fmt": "--format", "base_packages": "--base-packages", "quant": "--quant", "scale": "--scale"}
# tunelab.convert.gguf_export.QUANTS (kept here so --help starts without the model stage)
GGUF_QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l",
               "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
LLAMA_CPP_INSTALL = "pip install 'tunelab[llama-cpp]'"  # llama.cpp's quantiser: pyproject's extra, as docs/gguf.md says


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("export", help="merge a run's best (or last) checkpoint into a standalone HF model, or "
                                        "one GGUF file for llama.cpp / Ollama / LM Studio")
    add_model(p, "run directory, checkpoint, adapter or HF model directory", dest="run")
    p.add_argument("out", help="new output directory")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help="hf / mindspore weights (gguf: --quant)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--scale", default=None, metavar="S|chosen",
                   help="merge the LoRA adapter's update times S, a number in (0, 1] (weight-space interpolation "
                        "toward the base), or the scale the run's adapter-scale frontier chose (chosen)")
    p.add_argument("--format", choices=["hf", "mindspore", "both", "gguf"], default="hf",
                   help="mindspore: MindFormers model.ckpt + model_config.yaml instead of safetensors; both: "
                        "the HF directory plus mindspore/; gguf: NAME-QUANT.gguf (tokenizer and chat template "
                        "inside) and an Ollama Modelfile (llama, qwen2, gemma, gemma2)")
    p.add_argument("--quant", choices=list(GGUF_QUANTS), default=None, metavar="TYPE",
                   help="gguf: the tensor type, default f16; f32, f16, bf16, q8_0 are written as llama.cpp's "
                        "convert_hf_to_gguf.py writes them; q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s, q3_k_m, q3_k_l, "
                        f"q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k by llama.cpp's quantiser ({LLAMA_CPP_INSTALL}), "
                        "or without it the f16 file and the llama-quantize command to run")
    p.set_defaults(func=cli_export)

    p = verbs.add_parser("convert", help="Hugging Face directory <-> MindFormers .ckpt (Llama-2/3, InternLM)")
    add_model(p, "HF model directory, or a MindFormers .ckpt", dest="input")
    p.add_argument("output", help="a new .ckpt (from HF), or a new HF directory (from .ckpt)")
    p.add_argument("--config", default=None,
                   help=".ckpt -> HF: the MindFormers YAML (model.model_config), or an HF config.json/directory")
    p.add_argument("--tokenizer", default=None, help=".ckpt -> HF: copy the tokenizer files of this HF directory")
    p.add_argument("--dtype", choices=["keep", "bfloat16", "float16", "float32"], default="keep")
    p.add_argument("--qkv-concat", action="store_true",
                   help="HF -> .ckpt: fused w_qkv / w_gate_hidden, for a MindFormers YAML with qkv_concat: True")
    p.add_argument("--max-shard-gb", type=positive, default=5.0, help=".ckpt -> HF: safetensors shard size")
    p.set_defaults(func=cli_convert)

    p = verbs.add_parser("handin", help="the competition submission: five merged checkpoints, configs, logs, "
                                        "predictions, report, environment, description, checksums")
    add_model(p, "a finished run directory (tunelab run)", dest="run")
    p.add_argument("--out", required=True, help="new bundle directory")
    p.add_argument("--format", choices=["mindspore", "hf", "both"], default="mindspore",
                   help="checkpoint format: MindFormers .ckpt (default), HF safetensors, or both")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--base-packages", default=None, metavar="FILE",
                   help="pip freeze of the organisers' base image: environment.txt lists only the additions")
    p.add_argument("--scale", default=None, metavar="S|chosen",
                   help="merge the best checkpoint's LoRA update times S, a scale the run evaluated (eval.scales), "
                        "or the one its adapter-scale frontier chose (chosen); the other four are merged as trained")
    p.set_defaults(func=cli_handin)

    p = verbs.add_parser("runs", help="what is in run directories")
    runs = p.add_subparsers(dest="runs_verb", metavar="ACTION", required=True)
    q = runs.add_parser("check", help="each checkpoint of a run: whole, damaged, unfinished or set aside "
                                      "(checksums verified); exit 1 if one is damaged")
    q.add_argument("run", help="run directory")
    q.set_defaults(func=cli_runs_check)
    q = runs.add_parser("table", help="the runs under a directory side by side: the recipe keys that differ, best "
                                      "checkpoint, task metrics, retention, ratio, score, steps, wall time")
    q.add_argument("dir", nargs="?", default="runs", help="where to look for run directories, at any depth "
                                                         "(default: runs)")
    q.add_argument("--sort", default="score", metavar="COLUMN",
                   help="the column to order by, any of the table's (default: score); runs without a value last")
    q.add_argument("--ascending", action="store_true", help="lowest first (default: highest first)")
    q.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV (numbers unrounded)")
    q.add_argument("--png", default=None, metavar="FILE",
                   help="also plot score against low-parameter ratio, with the Pareto front")
    q.set_defaults(func=cli_runs_table)

    p = verbs.add_parser("ratio", help="trainable / total parameters of an adapter (meta device, no weights)")
    add_model(p, "preset name, local HF directory, config.json or hub id")
    p.add_argument("--adapter", default="lora", metavar="KIND",
                   help="the adapter kind, as the recipe's lora.adapter names it (default lora)")
    p.add_argument("--virtual-tokens", type=integer(1), default=20, metavar="N",
                   help="prompt_tuning: its virtual tokens (lora.virtual_tokens; default 20)")
    p.add_argument("--lora-rank", type=integer(1), default=None, help="lora and vera: the rank (required for them)")
    p.add_argument("--lora-target", default=None,
                   help="regex or comma list; MindFormers names (wq|wv|wo, w1..w3) are accepted (default: "
                        "q_proj,v_proj,o_proj for lora, peft's default layers for the others)")
    p.add_argument("--total-params", type=float, default=None,
                   help="divide by this nominal total instead (the competition used 8.03e9 for Llama-3-8B)")
    p.add_argument("--trainable-tokens", type=int, default=0, metavar="N",
                   help="N output-head rows trained beside the adapter (lora.trainable_tokens; a run's log says "
                        "how many 'auto' chose)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cli_ratio)

    p = verbs.add_parser("score", help="competition score from accuracy and low-parameter ratio")
    p.add_argument("--formula", choices=["stage1", "stage2"], default="stage1")
    p.add_argument("--accuracy", required=True, help="0.7161 or 71.61%%")
    p.add_argument("--ratio", required=True, type=float)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cli_score)


def _size_mb(directory) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6


@flags_for(_FLAGS)
def cli_export(args: argparse.Namespace) -> int:
    if args.format == "gguf":
        return _export_gguf(args)
    if args.quant:
        raise TunelabError("--quant is for --format gguf (hf and mindspore weights take --dtype)", field="--quant")
    from tunelab.convert.export import export
    out = export(args.run, args.out, args.dtype, args.checkpoint, args.format, args.scale)
    print(f"exported {out} ({_size_mb(out):.1f} MB)")
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    from tunelab.convert.export import export_gguf_dir
    result = export_gguf_dir(args.run, args.out, args.quant or "f16", args.checkpoint, args.scale)
    print(f"exported {result.path} ({result.path.stat().st_size / 1e6:.1f} MB) and {result.path.parent / 'Modelfile'}")
    if not result.tokenizer_exact:
        print(f"note: llama.cpp has no pre-tokenizer exactly like this tokenizer's; '{result.tokenizer_pre}' is the "
              "closest (see docs/gguf.md)", file=sys.stderr)
    if result.quantize_command:
        print(f"{result.quant.upper()} is made by llama.cpp's quantiser ({LLAMA_CPP_INSTALL} to have tunelab run "
              f"it); run: {result.quantize_command}")
    return 0


@flags_for(_FLAGS)
def cli_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tunelab.convert.mindformers import convert_checkpoint
    out = Path(args.output)
    if Path(args.input).suffix == ".ckpt" and not args.config:
        raise TunelabError("a .ckpt holds no architecture: give --config (the MindFormers YAML, or an HF "
                           "config.json or directory)", field="--config")
    if Path(args.input).suffix != ".ckpt" and (args.config or args.tokenizer):
        raise TunelabError("--config/--tokenizer are for .ckpt -> HF; an HF directory has its own",
                           field="--config" if args.config else "--tokenizer")
    summary = convert_checkpoint(args.input, out, args.config, args.tokenizer, args.dtype, args.qkv_concat,
                                 int(args.max_shard_gb * 1024 ** 3))
    if summary["to"] == "hf":
        print(f"converted {summary['parameters']} {summary['arch']} parameters into {out} "
              f"({summary['shards']} safetensors file(s))")
    else:
        note = (f"; left out {summary['skipped_buffers']} rotary_emb.inv_freq buffer(s) (recomputed from the "
                "config)") if summary["skipped_buffers"] else ""
        print(f"converted {summary['parameters']} {summary['arch']} parameters into {out} "
              f"({out.stat().st_size / 1e6:.1f} MB){note}")
    return 0


@flags_for(_FLAGS)
def cli_handin(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tunelab.handin import handin
    from tunelab.pipeline.chain_report import chain_model_elsewhere
    out = handin(args.run, args.out, args.format, args.dtype, args.base_packages, args.scale)
    n = sum(1 for _ in (out / "MANIFEST.sha256").read_text(encoding="utf-8").splitlines())
    print(f"hand-in bundle {out}: {n} files, {_size_mb(out):.1f} MB; check with "
          f"`cd {out} && sha256sum -c MANIFEST.sha256`")
    chosen = chain_model_elsewhere(Path(args.run))
    if chosen is not None:  # handed in as asked; the chain's own hand-in was made from another stage
        print(f"note: {args.run} is the last stage of a chain whose model is stage {chosen.get('stage')} "
              f"({chosen.get('run_dir')}, every ability kept): `tunelab handin {chosen.get('run_dir')}` hands that "
              f"in, as the chain's own handin/ does", file=sys.stderr)
    return 0


def cli_runs_check(args: argparse.Namespace) -> int:
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


def cli_runs_table(args: argparse.Namespace) -> int:
    from tunelab.compare import collect_runs, format_table, plot_score_vs_ratio, sort_rows, write_csv
    rows = collect_runs(args.dir)
    if not rows:
        print(f"no runs under {args.dir} (a run directory holds a recipe.yaml)")
        return 0
    rows = sort_rows(rows, args.sort, descending=not args.ascending)
    print(format_table(rows))
    print(f"{len(rows)} run(s) under {args.dir}, by {args.sort} "
          + ("lowest first" if args.ascending else "highest first"))
    if args.csv:
        print(f"wrote {write_csv(rows, args.csv)}")
    if args.png:
        print(f"wrote {plot_score_vs_ratio(rows, args.png)}")
    return 0


def _plain(number: float) -> str:
    """8.03e9 -> '8030000000': parameter totals read best as integers."""
    return str(int(number)) if float(number).is_integer() else repr(number)


@flags_for({"trainable_tokens": "--trainable-tokens"})
def cli_ratio(args: argparse.Namespace) -> int:
    from tunelab.errors import TunelabError
    from tunelab.recipe.lora import ADAPTERS
    from tunelab.scoring import adapter_param_counts, low_param_ratio
    if args.adapter not in ADAPTERS:   # the recipe's one list, read when the verb runs (--help needs no pydantic)
        raise TunelabError(f"unknown adapter kind '{args.adapter}' (one of {', '.join(ADAPTERS)})", field="--adapter")
    if args.lora_rank is None and args.adapter in ("lora", "vera"):
        raise TunelabError(f"--lora-rank is required for --adapter {args.adapter}")
    counts = adapter_param_counts(args.model, args.lora_rank or 1, args.lora_target, args.trainable_tokens,
                                  args.adapter, args.virtual_tokens)
    total = counts["total"] if args.total_params is None else args.total_params
    ratio = low_param_ratio(counts["trainable"], total)
    if args.json:
        print(json.dumps({**counts, "counted_total": counts["total"], "total": total, "ratio": ratio}))
        return 0
    target = counts["target"] if isinstance(counts["target"], str) else ",".join(counts["target"])
    print(f"model: {args.model}")
    rows = f", {args.trainable_tokens} trainable token row(s)" if args.trainable_tokens else ""
    rank = f"rank {args.lora_rank}, " if args.adapter in ("lora", "vera") else ""
    if args.adapter == "prompt_tuning":
        print(f"prompt_tuning: {args.virtual_tokens} virtual tokens")
    else:
        print(f"{args.adapter}: {rank}target {target}{rows}")
    print(f"trainable: {counts['trainable']}")
    if args.total_params is None:
        print(f"total: {counts['total']}")
    else:
        print(f"total: {_plain(total)} (--total-params; counted {counts['total']})")
    print(f"ratio: {ratio:.9f}")
    return 0


def cli_score(args: argparse.Namespace) -> int:
    from tunelab.scoring import FORMULA_TEXT, competition_score, parse_accuracy
    accuracy = parse_accuracy(args.accuracy)
    score = competition_score(args.formula, accuracy, args.ratio)
    if args.json:
        print(json.dumps({"formula": args.formula, "accuracy": accuracy, "ratio": args.ratio, "score": score}))
        return 0
    print(f"formula: {args.formula} = {FORMULA_TEXT[args.formula]}")
    print(f"accuracy: {accuracy:.9g}")
    print(f"ratio: {args.ratio:.9g}")
    print(f"score: {score:.9g}")
    return 0
