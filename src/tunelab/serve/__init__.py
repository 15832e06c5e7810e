"""Serving: an OpenAI-compatible HTTP server over a continuous-batching engine, a Gradio web UI with a
two-model arena and its leaderboard, and the same engine in the terminal.

  engine.py               the batching engine: one scheduler thread steps every active sequence together
  models.py               a model being served: weights, tokenizer, chat formatting, decoding defaults, its engine;
                          ServedModels: the models one server answers for, by name
  engine_vllm.py          the engine's contract fed by a vLLM server (`--engine vllm`): token ids in, token ids out
  vllm_serving.py         `tunelab serve RUN --engine vllm`: the run's base and every checkpoint on one vLLM server
  terminal.py             `tunelab generate`: prompts in, text out, in the terminal (no server, no extra to install)
  prompts.py              prompt files (`ui --examples`, `generate --file`)
  protocol.py             OpenAI request schemas and error bodies
  api.py                  the router (routes, error handlers, middlewares installed) and `tunelab serve`
  middleware.py           the API key and the request-size limit, before anything is parsed
  serving.py              what the serving classes share: request checks, a request's job, logprobs, usage, SSE
  serving_chat.py         /v1/chat/completions
  serving_completion.py   /v1/completions
  serving_models.py       /health, /v1/models, /stats
  serving_tokenization.py /tokenize, /detokenize, /tokenizer_info
  backends.py             chat backends for the UI: local (in-process engine) and remote (any OpenAI-compatible URL)
  arena.py                the SQLite vote store
  ratings.py              Bradley-Terry and Elo with bootstrap intervals, win-rate matrix
  ui.py                   the Gradio app (a function per tab) and `tunelab ui`
"""


def require_extra(*modules: str) -> None:
    """Fail with one clear line (not an ImportError traceback) when the [serve] extra is not installed."""
    from importlib.util import find_spec

    from tunelab.errors import TunelabError
    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise TunelabError(f"this needs {', '.join(missing)}: pip install -e '.[serve]'")
