"""`tunelab serve`, `ui` and `generate`: a model behind the OpenAI-compatible API, the web UI over local models
and endpoints, and text in the terminal. The server, the UI and the terminal generator are `tunelab.serve`'s;
here flags become their typed arguments, and a field named in an error becomes the flag that set it."""

from __future__ import annotations

import argparse

from tunelab.cli.arguments import (add_ckpt_inputs, add_engine, add_model, add_placement, count,
                                   engine_from_flags, flags_for, integer, number, port)
from tunelab.errors import TunelabError

_FLAGS = {"api_key": "--api-key", "device": "--device", "models": "--model", "auth": "--auth",
          "examples": "--examples", "file": "--file"}


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (batched)")
    add_model(p, "run directory (best checkpoint), checkpoint, HF or adapter directory, hub id, .gguf file or "
                 "MindFormers .ckpt")
    add_ckpt_inputs(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or env TUNELAB_API_KEY)")
    p.add_argument("--max-batch", type=integer(1), default=16, help="most sequences decoded together")
    p.add_argument("--max-request-bytes", type=int, default=2_000_000,
                   help="larger request bodies are refused with 413 before they are read further")
    p.add_argument("--max-sequences", type=int, default=64, help="most sequences (prompts × n) in one request")
    p.add_argument("--name", default=None, help="model id clients use (default: run/checkpoint name; with --engine "
                                                "vllm, the run's part of every name: NAME/base, NAME/step-N)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint of a run")
    add_placement(p)
    p.add_argument("--threads", type=count(0), default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_engine(p)
    p.set_defaults(func=cli_serve)

    p = verbs.add_parser("ui", help="web UI: chat, side by side, anonymous arena, leaderboard, runs and training")
    add_model(p, "[NAME=]PATH_OR_URL: a local model (run, checkpoint, HF or adapter directory, hub id, .gguf "
                 "file) or an OpenAI-compatible URL such as http://host:8000/v1, optionally URL#MODEL_ID and URL@KEY "
                 "or URL@env:VAR; with none, only the Runs and Train tabs", many=True, optional=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=7860)
    p.add_argument("--examples", default=None, help="example prompts: .txt (one a line), .json or .jsonl")
    p.add_argument("--db", default="arena.sqlite", help="SQLite file for arena votes")
    p.add_argument("--min-votes", type=integer(0), default=10, help="votes a model needs before it is ranked")
    p.add_argument("--max-batch", type=integer(1), default=16, help="batch limit of each local model's engine")
    p.add_argument("--auth", default=None, metavar="USER:PASS",
                   help="require this login for the whole UI, exports included (USER:env:VAR reads the password "
                        "from VAR); without it, listening beyond localhost prints a warning")
    p.add_argument("--project-dir", default=".", metavar="DIR",
                   help="the Train tab's project: its recipes/*.yaml are offered, runs start here; the page reads "
                        "and writes nothing outside it and --runs-dir (default: the current directory)")
    p.add_argument("--runs-dir", default="runs", metavar="DIR",
                   help="the runs the Runs tab lists (relative to --project-dir; default runs)")
    p.add_argument("--connect-timeout", type=float, default=3.0, help="seconds to reach a remote model")
    p.add_argument("--first-token-timeout", type=float, default=20.0,
                   help="seconds a remote model gets to send its first text")
    p.add_argument("--deadline", type=float, default=180.0, help="seconds a remote model gets for a whole answer")
    add_placement(p)
    add_engine(p)
    p.set_defaults(func=cli_ui)

    p = verbs.add_parser("generate", help="text from a model in the terminal: prompts as arguments, from a file, "
                                          "piped, or typed")
    add_model(p, "run directory (best checkpoint), checkpoint, HF or adapter directory, hub id, .gguf file or "
                 "MindFormers .ckpt", then="prompts")
    add_ckpt_inputs(p)
    p.add_argument("prompts", nargs="*", metavar="PROMPT",
                   help="prompts; with none and no --file: one a line from a pipe, or typed at a '>' prompt")
    p.add_argument("--file", default=None, help="prompts: .txt (one a line), .json list or .jsonl "
                                                "(prompt|instruction|problem|question|text)")
    p.add_argument("-n", "--num-samples", type=integer(1, 64), default=1, help="samples per prompt (default 1)")
    p.add_argument("--max-new-tokens", type=integer(1), default=None,
                   help="default: the model's generation config, else 128")
    p.add_argument("--temperature", type=number(0), default=None,
                   help="0: greedy (default: the model's generation config, else 1)")
    p.add_argument("--top-k", type=integer(0), default=None, help="0: off (default: the model's, else off)")
    p.add_argument("--top-p", type=number(0, 1, low_included=False), default=None,
                   help="nucleus sampling (default: the model's, else 1)")
    p.add_argument("--seed", type=integer(0, 2**63 - 1 - 64), default=None,
                   help="reproducible samples: sample j of every prompt uses SEED + j")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)")
    p.add_argument("--raw", action="store_true", help="the prompt as it is, without the model's chat template")
    p.add_argument("--json", action="store_true", help="one JSON line per sample: prompt, text, finish reason, "
                                                       "token counts")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint of a run")
    p.add_argument("--max-batch", type=integer(1), default=16, help="most sequences decoded together")
    add_placement(p)
    p.add_argument("--threads", type=count(0), default=0, help="torch CPU threads (0: torch's default)")
    add_engine(p)
    p.set_defaults(func=cli_generate)


class _StopOnTerm:
    """SIGTERM as SystemExit while the block runs, so a vLLM server started for it is stopped by the block's own
    cleanup (it runs in a session of its own: a plain SIGTERM would leave it running); the handler before is put
    back after. uvicorn handles SIGTERM itself while it serves and raises it again once it has shut down."""

    def __enter__(self):
        import signal
        import threading
        self._before = None
        if threading.current_thread() is threading.main_thread():
            def stop(signum, frame):
                raise SystemExit(128 + signum)
            self._before = signal.signal(signal.SIGTERM, stop)
        return self

    def __exit__(self, *exc) -> None:
        import signal
        if self._before is not None:
            signal.signal(signal.SIGTERM, self._before)


@flags_for(_FLAGS)
def cli_serve(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from tunelab.serve.api import api_key_of, create_app
    from tunelab.serve.models import ServedModel, ServedModels, describe_defaults
    from tunelab.serve.protocol import Limits
    key = api_key_of(args.api_key)
    limits = Limits(max_request_bytes=args.max_request_bytes, max_sequences=args.max_sequences)
    if limits.max_request_bytes < 1 or limits.max_sequences < 1:
        raise TunelabError("--max-request-bytes and --max-sequences must be at least 1")
    engine = engine_from_flags(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    with _StopOnTerm():
        if engine is not None and engine.kind == "vllm":
            from tunelab.serve.vllm_serving import serve_through_vllm
            models = serve_through_vllm(args.model, engine, name=args.name, which=args.checkpoint,
                                        max_batch=args.max_batch, precision=args.precision, device=args.device,
                                        mindformers_config=args.mindformers_config, tokenizer=args.tokenizer)
        else:
            models = ServedModels([ServedModel.load(
                args.model, name=args.name, max_batch=args.max_batch, precision=args.precision, device=args.device,
                which=args.checkpoint, mindformers_config=args.mindformers_config, tokenizer=args.tokenizer)])
        try:
            served = models.default
            app = create_app(models, api_key=key, limits=limits)
            host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0", "::") else args.host
            engine_note = f", vLLM at {served.engine.shared.url}" if getattr(served.engine, "kind", "") == "vllm" \
                else ""
            print(f"tunelab serve: {served.name}  ({served.model_dir}, context {served.context_len}, "
                  f"batch ≤ {served.engine.max_batch}{engine_note})")
            for other in list(models)[1:]:
                print(f"  also: {other.name}  ({other.model_dir})")
            print(f"  defaults for what a request leaves out: {describe_defaults(served.defaults)}")
            print(f"  OpenAI base URL: http://{host}:{args.port}/v1" + ("   (Bearer key required)" if key else ""))
            uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
        finally:
            models.close()      # the engines, and a vLLM server started for them
    return 0


@flags_for(_FLAGS)
def cli_ui(args: argparse.Namespace) -> int:
    import os
    import sys
    from functools import partial

    from tunelab.serve import require_extra
    from tunelab.serve.arena import ArenaStore
    from tunelab.serve.backends import Deadlines, build_backends, close_backends
    from tunelab.serve.models import ServedModel
    from tunelab.serve.ui.app import build_app, launch, parse_auth
    from tunelab.serve.ui.context import load_examples
    from tunelab.serve.ui.places import LOCAL_HOSTS, Places, actions_allowed_for
    require_extra("gradio", "openai", "httpx")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    auth = parse_auth(args.auth)
    deadlines = Deadlines(args.connect_timeout, args.first_token_timeout, args.deadline)
    public = args.host not in LOCAL_HOSTS
    places = Places.of(args.project_dir, args.runs_dir, actions_allowed=actions_allowed_for(args.host, auth))
    if not places.project.is_dir():
        raise TunelabError("not a directory", file=args.project_dir, field="--project-dir")
    if public and auth is None:
        print(f"warning: the UI listens on {args.host} without --auth USER:PASS: anyone who can reach it can chat "
              f"and vote; the vote export (stored prompts and answers) and starting, stopping or exporting runs "
              f"are switched off. "
              f"警告：未设置 --auth，任何能访问的人都可使用；投票导出已关闭。", file=sys.stderr)
    backends = build_backends(args.model, max_batch=args.max_batch, deadlines=deadlines, device=args.device,
                              precision=args.precision, engine=engine_from_flags(args))
    store = ArenaStore(args.db)
    demo = build_app(backends, store, load_examples(args.examples), min_votes=args.min_votes,
                     export_votes=auth is not None or not public, places=places,
                     load_model=partial(ServedModel.load, max_batch=args.max_batch, precision=args.precision,
                                        device=args.device))   # a run's checkpoint opened from the page
    models = f"{len(backends)} model(s): {', '.join(backends)}" if backends else "no models (Runs and Train only)"
    print(f"tunelab ui: {models}; votes in {args.db}; runs in {places.runs}" + ("; login required" if auth else ""))
    os.chdir(places.project)  # a recipe's relative paths mean in the page what they mean to `tunelab run` typed there
    try:
        launch(demo, host=args.host, port=args.port, share=False, auth=auth)
    finally:
        close_backends(backends)  # the models' engines, those the Runs tab opened too (they join `backends`)
    return 0


@flags_for(_FLAGS)
def cli_generate(args: argparse.Namespace) -> int:
    from tunelab.serve.terminal import GenerateOptions, generate_text, given_prompts
    options = GenerateOptions(num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                              stop=args.stop, raw=args.raw, json=args.json)
    prompts = given_prompts(args.prompts, args.file)  # before the model loads: a bad file costs no wait
    with _StopOnTerm():
        return generate_text(args.model, prompts, options, checkpoint=args.checkpoint, max_batch=args.max_batch,
                             device=args.device, precision=args.precision, threads=args.threads,
                             mindformers_config=args.mindformers_config, tokenizer=args.tokenizer,
                             engine=engine_from_flags(args))
