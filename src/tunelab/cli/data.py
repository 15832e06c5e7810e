"""`tunelab data …` and `tunelab tokenizer train`: generating, converting, checking and preparing training data,
and the tokenizer a from-scratch model is trained with (it reads the corpus the same way, so the two verbs share
their reading flags). Flags become the typed calls of `tunelab.data` (and `tunelab.model.tokenizer`)."""

from __future__ import annotations

import argparse

from tunelab.cli.arguments import add_corpus_reading, add_set, flags_for, integer, number

_SET = {"overrides": "--set"}
_READING = {"val_fraction": "--val-fraction"}  # a message naming the setting (`val_fraction must be …`)


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    """`tunelab data ACTION` (a function per action's parser, in the order `--help` lists them) and
    `tunelab tokenizer train`."""
    p = verbs.add_parser("data", help="generate, convert and inspect training data")
    data = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    _add_arithmetic(data)
    _add_choice(data)
    _add_encyclopedia(data)
    _add_qa_split(data)
    _add_prefs(data)
    _add_convert(data)
    _add_check(data)
    _add_show(data)
    _add_glue(data)
    _add_corpus(data)
    _add_tokenizer(verbs)


def _add_arithmetic(data: argparse._SubParsersAction) -> None:
    """`data arithmetic`: generate problems (or subsample a file) with the generator's difficulty options."""
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
    q.add_argument("--show-work", default=None, metavar="WORK",
                   help="none (default); signs: sums and differences first reduced to one unsigned operation, "
                   "'4.72 + (-7.15) = -(7.15 - 4.72) = -2.43'; columns: and each difference worked column by "
                   "column, '-(7.15 - 4.72) (5-2=3 11-7=4 6-4=2) = -2.43'; digits: sums and differences worked "
                   "column by column, each column's digits first, '(5-2=3 1-7<0 11-7=4 7-4-1=2)', '(7+9=16 9+2+1=12)'; "
                   "compare: digits, and numbers of opposite signs compared from the left before the larger is put "
                   "first, '-6.73 + 5.23 (6.73 vs 5.23: 6>5) = -(6.73 - 5.23) (…)'")
    q.set_defaults(func=cli_arithmetic)


def _add_choice(data: argparse._SubParsersAction) -> None:
    """`data choice`: single-choice reading questions, a CPU rehearsal of the competition's stage 2."""
    q = data.add_parser("choice", help="generate single-choice reading questions in Chinese and English (a stand-in "
                                       "for stage 2's data: the wrong options are the passage's other values)")
    q.add_argument("--out", required=True, help="output file (.json array or .jsonl)")
    q.add_argument("--count", type=integer(1), default=1000, help="number of questions to write")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--lang", choices=["zh", "en", "mix"], default="mix")
    q.add_argument("--options", type=integer(2), default=4, help="options a question, 2 to 6 (default 4)")
    q.add_argument("--people", default="2-4", metavar="N|FEWEST-MOST",
                   help="people a passage names, 1 to 6 (default 2-4): with one, no wrong option is in the passage")
    q.set_defaults(func=cli_choice)


def _add_encyclopedia(data: argparse._SubParsersAction) -> None:
    """`data encyclopedia`: articles of an invented world and their QA pairs."""
    q = data.add_parser("encyclopedia", help="Chinese encyclopedia-style articles of an invented world, with QA pairs")
    q.add_argument("--out", required=True, help="new directory for articles.jsonl and qa.jsonl")
    q.add_argument("--count", type=int, default=5000, help="number of articles")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--no-noise", action="store_true",
                   help="no wiki-dump noise (empty brackets, markup, stray whitespace, duplicates)")
    q.set_defaults(func=cli_encyclopedia)


def _add_qa_split(data: argparse._SubParsersAction) -> None:
    """`data qa-split`: QA pairs split as the corpus split their articles."""
    q = data.add_parser("qa-split", help="QA pairs split as a corpus split their articles: train.jsonl for "
                                         "fine-tuning, val.jsonl held out")
    q.add_argument("qa", nargs="+", help="JSONL files of {question, answer, source_id} (source_id: a corpus doc id)")
    q.add_argument("--corpus", required=True, help="the prepared corpus whose document split decides")
    q.add_argument("--out", required=True, help="new directory for train.jsonl, val.jsonl and summary.json")
    q.set_defaults(func=cli_qa_split)


def _add_prefs(data: argparse._SubParsersAction) -> None:
    """`data prefs`: preference pairs from an arena database and/or preference files."""
    q = data.add_parser("prefs", help="preference pairs {prompt, chosen, rejected} from arena votes and/or "
                                      "preference files, split by prompt into train.jsonl and val.jsonl")
    q.add_argument("files", nargs="*", help="preference files (JSONL or JSON): {prompt, chosen, rejected} texts or "
                                            "chat messages, UltraFeedback-style conversations, HH-RLHF text")
    q.add_argument("--arena", default=None, metavar="VOTES.db", help="an arena database (`tunelab ui`'s votes)")
    q.add_argument("--out", required=True, help="new directory for train.jsonl, val.jsonl and summary.json")
    q.add_argument("--val-fraction", type=number(0, 1, True), default=0.1,
                   help="share of prompts held out for validation (default 0.1)")
    q.add_argument("--seed", type=int, default=0, help="which prompts are held out")
    q.add_argument("--named", action="store_true",
                   help="also use votes cast with the model names shown (by default anonymous battles only)")
    q.add_argument("--from-samples", action="append", default=[], metavar="PREDICTIONS.jsonl",
                   help="a predictions file of `tunelab eval --samples K`: a right and a wrong sampled answer of "
                        "each problem, as the task's grader judged them, are a pair (repeatable)")
    q.add_argument("--per-problem", type=integer(1), default=1,
                   help="--from-samples: at most this many pairs a problem (default 1)")
    q.set_defaults(func=cli_prefs)


def _add_convert(data: argparse._SubParsersAction) -> None:
    """`data convert`: competition data in a training format."""
    q = data.add_parser("convert", help="convert competition data to a training format")
    q.add_argument("input", help="competition JSON/JSONL ({problem, solution})")
    q.add_argument("--out", required=True)
    q.add_argument("--format", choices=["conversations", "alpaca", "messages"], default="conversations")
    q.add_argument("--template", default="alpaca", help="prompt template for the conversations format")
    q.add_argument("--instruction-prefix", default="",
                   help='e.g. "You are an expert in mathematics, accurately calculating the following problem."')
    q.add_argument("--cot", action="store_true", help="append the zero-shot \"Let's think step by step.\"")
    q.set_defaults(func=cli_convert)


def _add_check(data: argparse._SubParsersAction) -> None:
    """`data check`: a recipe's data as training sees it, with lengths and packing."""
    q = data.add_parser("check", help="show rendered samples, loss tokens, lengths and packing efficiency")
    q.add_argument("recipe")
    add_set(q)
    q.add_argument("--samples", type=integer(0), default=3)
    q.set_defaults(func=cli_check)


def _add_show(data: argparse._SubParsersAction) -> None:
    """`data show`: the first training examples, their trained tokens marked."""
    q = data.add_parser("show", help="the first training examples as the model sees them, the trained tokens "
                                     "marked (--json: input_ids and labels, -100 where nothing is trained)")
    q.add_argument("recipe")
    add_set(q)
    q.add_argument("--n", type=integer(1), default=3, help="how many examples (default 3)")
    q.add_argument("--json", action="store_true", help="one JSON object per example: id, input_ids, labels, text")
    q.set_defaults(func=cli_show)


def _add_glue(data: argparse._SubParsersAction) -> None:
    """`data glue`: GLUE TSVs as pre_data JSON files."""
    q = data.add_parser("glue", help="GLUE CoLA/QQP TSVs to pre_data/{task}/{task}_{train,val,dev}.json")
    q.add_argument("--task", required=True, type=str.strip, metavar="CoLA|QQP")
    q.add_argument("--data-dir", required=True, help="folder with train.tsv and dev.tsv (or a GLUE root)")
    q.add_argument("--out", default="pre_data", help="output root (default: pre_data)")
    q.add_argument("--limit", type=integer(1), default=None, help="sample this many training rows (default: all)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--instruction", default=None, help="instruction text (default: the task's, see docs)")
    q.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the sampled training rows held out as {task}_val.json")
    q.set_defaults(func=cli_glue)


def _add_corpus(data: argparse._SubParsersAction) -> None:
    """`data corpus`: prepare, verify or show a pretraining corpus."""
    q = data.add_parser("corpus", help="pretraining corpus: clean, split into sentence-aligned token blocks; "
                                       "--verify / --show a prepared one")
    q.add_argument("inputs", nargs="*", metavar="INPUT", help=".jsonl/.json/.txt files (or .gz), .parquet/.arrow/.csv "
                   "files, save_to_disk folders, folders of them, or hf:NAME (a hub dataset, offline from its cache)")
    q.add_argument("--tokenizer", help="Hugging Face tokenizer directory (e.g. from `tunelab tokenizer train`)")
    q.add_argument("--block-size", type=int, help="tokens per block at most, the final EOT included")
    q.add_argument("--out", help="new corpus directory")
    q.add_argument("--verify", metavar="DIR", help="re-read the inputs of DIR and prove no character was lost")
    q.add_argument("--show", metavar="DIR", help="print blocks of DIR as JSON lines (decoded)")
    q.add_argument("--doc", default=None, help="--show: only this document (id, or index in docs.jsonl)")
    q.add_argument("--split", choices=["train", "val"], default=None, help="--show: only this split")
    q.add_argument("--limit", type=integer(1), default=20, help="--show: at most this many blocks (default 20)")
    add_corpus_reading(q)
    q.set_defaults(func=cli_corpus)


def _add_tokenizer(verbs: argparse._SubParsersAction) -> None:
    """`tokenizer train`: a tokenizer read from the corpus as `data corpus` reads it (the same reading flags)."""
    p = verbs.add_parser("tokenizer", help="train a tokenizer for from-scratch models")
    tok = p.add_subparsers(dest="tokenizer_verb", metavar="ACTION", required=True)
    q = tok.add_parser("train", help="byte-level BPE on the cleaned corpus (CJK-aware, digits split, EOT/PAD/SEP)")
    q.add_argument("inputs", nargs="+", metavar="INPUT", help=".jsonl/.json/.txt files (or .gz), .parquet/.arrow/.csv "
                   "files, save_to_disk folders, folders of them, or hf:NAME (a hub dataset, offline from its cache)")
    q.add_argument("--vocab-size", type=int, required=True)
    q.add_argument("--out", required=True, help="new tokenizer directory")
    add_corpus_reading(q)
    q.set_defaults(func=cli_tokenizer_train)


def cli_arithmetic(args: argparse.Namespace) -> int:
    """`tunelab data arithmetic`: generate (or subsample --from) and print a one-line summary."""
    from collections import Counter

    from tunelab.data.synthetic.arithmetic import KINDS, generate, subsample, write_records
    from tunelab.errors import TunelabError
    if args.list_kinds:
        for kind in KINDS:
            ex = generate(1, args.seed, [kind], args.lang)[0]
            print(f"{kind:<9} {ex['problem']}  →  {ex['solution']}")
        return 0
    if not args.out:
        raise TunelabError("--out is required (a .json or .jsonl file to write), unless --list-kinds")
    names = ("int_digits", "decimals", "fixed_decimals", "signed", "show_work")
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.source:
        if args.kinds or options:
            given = "--kinds" if args.kinds else "--" + next(iter(options)).replace("_", "-")
            raise TunelabError(f"{given} applies to generated problems, not to --from")
        records = subsample(args.source, args.count, args.seed)
    else:
        try:
            records = generate(args.count, args.seed, args.kinds, args.lang, **options)
        except TunelabError as e:  # an option's field is the flag that set it
            flag = "--" + e.field.replace("_", "-") if e.field in options else e.field
            raise TunelabError(e.message, field=flag) from e
    write_records(args.out, records)
    hist = Counter(str(r.get("kind", "")) for r in records)
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(hist.items()) if k) or "no kind labels"
    origin = f" (subsampled from {args.source}, seed {args.seed})" if args.source else ""
    print(f"wrote {len(records)} problems to {args.out}{origin}: {kinds}")
    return 0


def cli_choice(args: argparse.Namespace) -> int:
    """`tunelab data choice`: write the questions and print how often each letter is right."""
    from collections import Counter

    from tunelab.data.formats import LETTERS
    from tunelab.data.synthetic.arithmetic import write_records
    from tunelab.data.synthetic.choice import generate
    from tunelab.errors import TunelabError
    try:
        fewest, _, most = args.people.partition("-")
        people = [int(fewest), int(most or fewest)] if (fewest + most).isdigit() else args.people
        records = generate(args.count, args.seed, lang=args.lang, options=args.options, people=people)
    except TunelabError as e:
        raise TunelabError(e.message, field="--" + e.field) from e
    write_records(args.out, records)
    letters = Counter(LETTERS[r["answer"]] for r in records)
    langs = Counter(r["lang"] for r in records)
    print(f"wrote {len(records)} questions to {args.out}: "
          + ", ".join(f"{k} {n}" for k, n in sorted(langs.items())) + "; right letter "
          + ", ".join(f"{k} {n}" for k, n in sorted(letters.items())))
    return 0


def cli_encyclopedia(args: argparse.Namespace) -> int:
    """`tunelab data encyclopedia`: write the articles and QA pairs, print a one-line summary."""
    import time
    from collections import Counter

    from tunelab.data.synthetic.encyclopedia import generate_articles, write_encyclopedia
    from tunelab.data.synthetic.encyclopedia_articles import KINDS
    start = time.perf_counter()
    articles, qa = generate_articles(args.count, args.seed, noise=not args.no_noise)
    write_encyclopedia(args.out, articles, qa)
    kinds = Counter(a["kind"] for a in articles)
    texts = Counter(a["text"] for a in articles)
    duplicates = sum(n - 1 for n in texts.values())
    chars = sum(len(a["text"]) for a in articles)
    print(f"wrote {len(articles)} articles ({', '.join(f'{k} {kinds[k]}' for k in KINDS)}; {chars:,} characters; "
          f"{duplicates} exact duplicates; noise {'off' if args.no_noise else 'on'}) and {len(qa)} QA pairs "
          f"to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def cli_qa_split(args: argparse.Namespace) -> int:
    """`tunelab data qa-split`: write the split and print its counts."""
    from tunelab.data.synthetic.qa_split import split_qa_by_corpus
    s = split_qa_by_corpus(args.qa, args.corpus, args.out)
    print(f"{s['val']:,} held-out pairs ({s['val_articles']:,} val-split articles) and {s['train']:,} training pairs "
          f"({s['train_articles']:,} train-split articles; {s['train_asking_held_out']:,} asking a held-out question "
          f"and {s['repeated']:,} repeats left out, {s['not_in_corpus']:,} of articles not in the corpus) "
          f"-> {args.out}")
    return 0


@flags_for({"out": "--out", "val_fraction": "--val-fraction", "sources": "--arena"})
def cli_prefs(args: argparse.Namespace) -> int:
    """`tunelab data prefs`: write the pairs and say what was read, written and left out (and why)."""
    from collections import Counter

    from tunelab.data.preferences import build_preferences
    from tunelab.errors import TunelabError
    from tunelab.records import NotTextError
    try:
        s = build_preferences(args.out, arena=args.arena, files=args.files, val_fraction=args.val_fraction,
                              seed=args.seed, named=args.named, samples=args.from_samples,
                              per_problem=args.per_problem)
    except NotTextError as e:  # the arena's votes.db given where preference files go
        if e.found != "sqlite":
            raise
        raise TunelabError(f"{e.message}; an arena's votes database is read with --arena", file=e.file) from e
    read = f"{s['read']:,} records read"
    if "sampled_problems" in s:  # a problem gives up to --per-problem pairs: its own count, not the pairs'
        read = f"{s['sampled_problems']:,} sampled problems" + (" and the other records" if args.files or args.arena
                                                                 else "") + " read"
    print(f"{read}, {s['pairs']:,} preference pairs written: {s['train']:,} for training "
          f"({s['train_prompts']:,} prompts), {s['val']:,} held out ({s['val_prompts']:,} prompts) -> {args.out}")
    if s["left_out"]:
        reasons = Counter(s["skipped"]) + Counter(s["dropped"])
        print(f"{s['left_out']:,} left out: " + ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items())))
    return 0


def cli_convert(args: argparse.Namespace) -> int:
    from tunelab.data.convert import convert_file
    from tunelab.data.templates import PromptTemplate
    template = PromptTemplate(args.template, args.instruction_prefix, args.cot)
    n = convert_file(args.input, args.out, args.format, template)
    print(f"wrote {n} {args.format} records to {args.out}")
    return 0


@flags_for(_SET)
def cli_show(args: argparse.Namespace) -> int:
    import json
    import sys

    from tunelab.data_check import render_marked, show
    from tunelab.recipe import load_recipe
    recipe = load_recipe(args.recipe, args.overrides)
    examples, encoded, tok, template = show(recipe, args.n)
    if args.json:
        for ex, enc in zip(examples, encoded):
            print(json.dumps({"id": ex.id, "input_ids": enc.input_ids, "labels": enc.labels,
                              "text": tok.decode(enc.input_ids), "truncated": enc.truncated}, ensure_ascii=False))
        return 0
    colour = sys.stdout.isatty()
    marks = ("\033[30;42m", "\033[0m") if colour else ("[[", "]]")
    print(f"template '{template.name}', loss on {recipe.data.loss_on}: trained tokens "
          f"{'in green' if colour else 'between [[ and ]]'}\n")
    for ex, enc in zip(examples, encoded):
        trained = sum(1 for x in enc.labels if x != -100)
        replayed = " — REPLAY: the base's own answer (data.replay: self)" if ex.meta.get("replay") else ""
        print(f"--- {ex.id}: {len(enc.input_ids)} tokens, {trained} trained{' TRUNCATED' if enc.truncated else ''}"
              f"{replayed}")
        print(render_marked(tok, enc.input_ids, enc.labels, marks))
        print()
    return 0


def cli_check(args: argparse.Namespace) -> int:
    from tunelab.data_check import check, render_marked
    from tunelab.recipe import load_recipe
    recipe = load_recipe(args.recipe, args.overrides)
    r = check(recipe, args.samples)
    tok = r["tokenizer"]
    print(f"{r['count']} samples from {len(recipe.data.train)} source(s); template '{r['template']}'; "
          f"loss on {recipe.data.loss_on} tokens (marked ⟦…⟧)\n")
    for ex, enc in list(zip(r["examples"], r["encoded"]))[: r["samples"]]:
        print(f"--- {ex.id} ({len(enc.input_ids)} tokens){' TRUNCATED' if enc.truncated else ''}")
        print(render_marked(tok, enc.input_ids, enc.labels))
        print()
    L = r["length"]
    print(f"tokens per sample: min {L['min']}, median {L['median']:.0f}, mean {L['mean']:.1f}, "
          f"p95 {L['p95']}, max {L['max']}; loss tokens per sample: {r['loss_tokens_mean']:.1f}")
    print(f"truncated at max_seq_len {recipe.data.max_seq_len}: {r['truncated']} "
          f"({100 * r['truncated'] / r['count']:.2f}%)")
    if r["replay"]["blocks"]:
        from tunelab.train.corpus_rows import describe_replay
        print(describe_replay(recipe, r["replay"]["samples"], r["encoded"]))
    if recipe.data.packing:
        print(f"packing: {r['rows']} rows of {recipe.data.max_seq_len}, {100 * r['packing_efficiency']:.1f}% "
              f"real tokens (padding every sample to {recipe.data.max_seq_len} would be "
              f"{100 * r['padded_efficiency']:.1f}%)"
              + (f"; the first {r['shared_prefix']} tokens, which every sample shares, held once a row"
                 if r["shared_prefix"] else ""))
    else:
        print(f"packing off: {r['rows']} rows, one sample each")
    if r["learned"]:
        from tunelab.model.untrained_tokens import learned_note
        print(f"answer tokens: {learned_note(r['learned'])}")
    if r["collapsed"]:
        from tunelab.model.untrained_tokens import describe
        fix = ("lora.trainable_tokens: auto trains their rows" if recipe.lora.trainable_tokens == "auto" else
               "set lora.trainable_tokens: auto to train their rows beside the adapter")
        print(f"answer tokens the base never learned to emit: {describe(r['collapsed'])}. LoRA cannot separate "
              f"their output rows from the others, so sampling rarely picks them; {fix}")
    elif r["collapsed"] is not None:
        print("answer tokens the base never learned to emit: none")
    return 0


@flags_for({"val_fraction": "--val-fraction", "limit": "--limit"})
def cli_glue(args: argparse.Namespace) -> int:
    """`tunelab data glue --task CoLA|QQP --data-dir DIR --out pre_data [...]`."""
    from tunelab.data.glue import write_pre_data
    result = write_pre_data(args.task, args.data_dir, args.out, limit=args.limit, seed=args.seed,
                            instruction=args.instruction, val_fraction=args.val_fraction)
    print(f"{result['task']}: {result['source_train']} labelled training rows in {args.data_dir}")
    print(f"  train {result['train']:>7}  {result['paths']['train']}")
    print(f"  val   {result['val']:>7}  {result['paths']['val']}")
    dev_note = "" if result["dev_labelled"] else "  (no labels: output is empty)"
    print(f"  dev   {result['dev']:>7}  {result['paths']['dev']}{dev_note}")
    return 0


def _read_settings(args: argparse.Namespace):
    """The reading/cleaning flags shared by `data corpus` and `tokenizer train`, as `ReadSettings`."""
    from tunelab.data.corpus.clean import CleaningConfig
    from tunelab.data.corpus.chunks import ReadSettings
    cleaning = CleaningConfig(split_title=not args.no_split_title, prepend_title=args.prepend_title,
                              empty_brackets=not args.no_empty_brackets, markup=not args.no_markup,
                              whitespace=not args.no_whitespace, nfkc=args.nfkc, min_chars=args.min_chars,
                              dedup=not args.no_dedup)
    return ReadSettings(text_field=args.text_field, id_field=args.id_field or None,
                        title_field=args.title_field or None, skip_bad=args.skip_bad,
                        val_fraction=args.val_fraction, seed=args.seed, cleaning=cleaning)


def _inputs(args: argparse.Namespace) -> list:
    """The INPUT arguments, each hf:NAME with --hf-config and --hf-split."""
    from tunelab.data.corpus.read import with_hub_options
    return with_hub_options(args.inputs, args.hf_config, args.hf_split)


@flags_for({"text_field": "--text-field", "split": "--hf-split", "config": "--hf-config"}, {**_READING, "block_size": "--block-size", "tokenizer": "--tokenizer"})
def cli_corpus(args: argparse.Namespace) -> int:
    import json
    import sys

    from tunelab.data.corpus.prepare import format_summary, prepare_corpus
    from tunelab.data.corpus.verify import show_blocks, verify_corpus
    from tunelab.errors import TunelabError
    if args.verify:
        result = verify_corpus(args.verify, workers=args.workers)
        for problem in result["examples"]:
            print(json.dumps(problem, ensure_ascii=False))
        if result["differences"]:
            print(f"verify: {result['differences']} differences in {result['documents']} documents", file=sys.stderr)
            return 1
        print(f"verify: OK — {result['documents']} documents, every character in its blocks, in order")
        return 0
    if args.show:
        for row in show_blocks(args.show, doc=args.doc, split=args.split, limit=args.limit):
            print(json.dumps(row, ensure_ascii=False))
        return 0
    missing = [flag for flag, value in (("INPUT", args.inputs), ("--tokenizer", args.tokenizer),
                                        ("--block-size", args.block_size), ("--out", args.out)) if not value]
    if missing:
        raise TunelabError(f"data corpus needs {', '.join(missing)} (or --verify DIR / --show DIR)")
    meta = prepare_corpus(_inputs(args), args.tokenizer, args.block_size, args.out, _read_settings(args),
                          workers=args.workers)
    print(format_summary(meta))
    print(f"wrote {args.out}")
    return 0


@flags_for({"text_field": "--text-field", "split": "--hf-split", "config": "--hf-config"}, {**_READING, "vocab_size": "--vocab-size"})
def cli_tokenizer_train(args: argparse.Namespace) -> int:
    from tunelab.model.tokenizer import tokenizer_summary, train_tokenizer_dir
    report = train_tokenizer_dir(_inputs(args), args.vocab_size, args.out, _read_settings(args), args.workers)
    print("\n".join(tokenizer_summary(report)))
    print(f"wrote {args.out}")
    return 0
