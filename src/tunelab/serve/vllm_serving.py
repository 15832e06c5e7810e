"""`tunelab serve RUN --engine vllm`: a run's base and every checkpoint as models of one server, decoded by vLLM.

Users reach tunelab's own server only (its router, key, body and size limits, per-request checks, the model's
own chat template rendered and tokenised by tunelab); vLLM runs behind it on the loopback as the engine
(`serve.engine_vllm`), started from its own interpreter (`decoding.vllm_server`) or found at `engine.url`. The
base is loaded once, and each checkpoint's LoRA adapter by name (`/v1/load_lora_adapter`), never merged: the
arena and side by side compare checkpoints without loading one model each.

What a run serves, by name (the names `tunelab serve` and the UI give): `RUN/base` (the base its adapters were
trained on) and `RUN/step-N` for every whole checkpoint whose adapter vLLM can serve. A checkpoint that is not
whole, holds a full model rather than an adapter, sits on another base, or holds an adapter vLLM does not serve
(IA³, VeRA, prompt tuning, trained token rows, DoRA, a rank above `engine.max_lora_rank`:
`decoding.vllm_engine.unservable`) is not served, and one log line says why (`tunelab serve CKPT` without
`--engine vllm` serves it on the embedded engine). A checkpoint or adapter directory serves itself and its base;
any other model itself alone. The default (what a request naming no model gets, listed first) is the checkpoint
the embedded engine would serve (`--checkpoint best|last`), else the base.

The started server's log is the run's `vllm.log` (beside the model when no run was named); the server is stopped
when the models are closed (`ServedModels.close`, which `tunelab serve` calls however it ends). If it dies while
serving, it is started again and its adapters loaded again (`decoding.vllm_server.ServerWatch`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

from tunelab.errors import TunelabError
from tunelab.recipe.engine import EngineConfig
from tunelab.serve.models import ServedModel, ServedModels, default_name

log = logging.getLogger("tunelab.serve")

BASE = "base"      # the base's name: RUN/base, as the UI's Runs tab names it


def _same_path(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    return (pa.resolve() == pb.resolve()) if pa.exists() and pb.exists() else a == b


def why_not_served(ckpt: Path, base: str, max_lora_rank: int) -> str | None:
    """Why a run's checkpoint is not served as an adapter of `base` through vLLM, or None when it is."""
    from tunelab.decoding.vllm_engine import unservable
    from tunelab.model.base_record import resolve_base_model
    from tunelab.runs import is_whole, model_dir_of
    if not is_whole(ckpt):
        return "it is not whole (damaged, or still being written)"
    model_dir = model_dir_of(ckpt)
    if not (model_dir / "adapter_config.json").is_file():
        return "it holds a full model, not an adapter of the base (serve it alone: tunelab serve CHECKPOINT)"
    try:
        own = resolve_base_model(model_dir)
    except TunelabError as e:
        return f"its base cannot be found ({e.message})"
    if not _same_path(own, base):
        return f"its adapter is on another base ({own})"
    why = unservable(model_dir, max_lora_rank)
    return f"{why} (serve it with the embedded engine: tunelab serve CHECKPOINT)" if why else None


def serve_through_vllm(path: str | Path, engine: EngineConfig, *, name: str | None = None, which: str = "best",
                       max_batch: int = 16, precision: str = "auto", device: str | None = None,
                       mindformers_config: str | Path | None = None, tokenizer: str | Path | None = None,
                       every_checkpoint: bool = True) -> ServedModels:
    """The models `path` names (module docstring) on one vLLM server: started from `engine.python` (or found at
    `engine.url`), the base in the dtype the embedded engine would use (`precision`, `device`), its context
    tunelab's. `name`: the run's part of the names (default: the run directory's name); `max_batch`: sequences
    open on the server at once; `every_checkpoint=False`: of a run, only the checkpoint `which` chooses (and its
    base: `tunelab generate`). Closing the result unloads the adapters and stops a server it started."""
    from transformers import AutoConfig

    from tunelab.convert.resolve_model import resolve_model
    from tunelab.decoding.stops import context_length
    from tunelab.decoding.vllm_engine import VLLMEngine
    from tunelab.decoding.vllm_server import ServerWatch, VLLMServer, find_vllm_python
    from tunelab.model.device import inference_dtype, resolve_device
    from tunelab.model.loading import load_tokenizer, quiet_transformers
    from tunelab.runs import checkpoint_dirs, model_dir_of
    from tunelab.serve.engine_vllm import VLLMServingEngine
    quiet_transformers()
    resolved = resolve_model(path, which=which, mindformers_config=mindformers_config, tokenizer=tokenizer,
                             field=None)
    base, run = resolved.base, resolved.run
    # (the name clients use, the name vLLM knows, the directory) of every adapter served
    adapters: list[tuple[str, str, Path]] = []
    if run is not None:
        prefix = name or run.name
        for ckpt in checkpoint_dirs(run):
            if not every_checkpoint and model_dir_of(ckpt) != Path(resolved.path):
                continue
            if resolved.adapter is None:
                why = "the run's checkpoints are full models, not adapters of one base"
                if model_dir_of(ckpt) != Path(resolved.path):
                    log.warning(f"engine vllm: {prefix}/{ckpt.name} is not served: {why}")
                continue
            why = why_not_served(ckpt, base, engine.max_lora_rank)
            if why:
                log.warning(f"engine vllm: {prefix}/{ckpt.name} is not served: {why}")
            else:
                adapters.append((f"{prefix}/{ckpt.name}", ckpt.name, model_dir_of(ckpt)))
        base_name = f"{prefix}/{BASE}" if resolved.adapter is not None else default_name(path, resolved.path)
    else:
        if resolved.adapter is not None:
            from tunelab.decoding.vllm_engine import unservable
            why = unservable(resolved.adapter, engine.max_lora_rank)
            if why:
                raise TunelabError(f"vLLM cannot serve this adapter: {why}; serve it without --engine vllm",
                                   file=resolved.adapter)
            adapters.append((name or default_name(path, resolved.adapter), "adapter", resolved.adapter))
            base_name = Path(base).name if Path(base).exists() else base
        else:
            base_name = name or default_name(path, base)
    chosen = next((a for a in adapters if resolved.adapter is not None and a[2] == resolved.adapter), None)

    dev = resolve_device(device, field="device")
    base_tokenizer = load_tokenizer(base)
    config = AutoConfig.from_pretrained(base)
    context = context_length(SimpleNamespace(config=config), base_tokenizer)
    vocab = int(getattr(config, "vocab_size", None) or len(base_tokenizer))
    server = None
    closing: list = []
    try:
        if engine.url:
            url = engine.url
            probe = VLLMEngine(url, "")
            try:
                listing = list(probe.endpoint.client().models.list())
            except Exception as e:  # noqa: BLE001 - the shared client's one error naming the URL
                raise probe.endpoint.error(e) from e
            finally:
                probe.close()
            if not listing:
                raise TunelabError(f"{url} lists no models", field="engine.url")
            vllm_base = listing[0].id
            theirs = getattr(listing[0], "max_model_len", None)
            context = min(context, int(theirs)) if isinstance(theirs, int) and theirs > 0 else context
            log.info(f"engine vllm: the server at {url} serves {vllm_base}; tunelab takes it as {base}")
        else:
            log_dir = run if run is not None else (Path(resolved.path).parent if resolved.local else Path("."))
            extra = list(engine.extra_args)
            if len(adapters) > engine.max_loras and "--max-cpu-loras" not in extra:
                extra += ["--max-cpu-loras", str(len(adapters))]     # every adapter stays loaded
            server = VLLMServer(find_vllm_python(engine.python), base, BASE, Path(log_dir) / "vllm.log",
                                dtype=inference_dtype(precision, dev), max_lora_rank=engine.max_lora_rank,
                                max_loras=engine.max_loras, tensor_parallel=engine.tensor_parallel,
                                pipeline_parallel=engine.pipeline_parallel,
                                gpu_memory_utilization=engine.gpu_memory_utilization, max_model_len=context,
                                extra_args=extra, startup_timeout=engine.startup_timeout)
            closing.append(server.stop)
            server.start()
            url, vllm_base = server.url, BASE
        loader = VLLMEngine(url, vllm_base)
        closing.insert(0, loader.close)     # unloads the adapters (a server at engine.url keeps running)

        def load_adapters() -> None:
            for _, vllm_name, adapter in adapters:
                loader.load_adapter(vllm_name, str(adapter))
        load_adapters()
        if not engine.url:                  # a server tunelab started is started again if it dies
            closing.insert(0, ServerWatch(server, load_adapters).start().stop)
        shared = VLLMServingEngine(url, max_batch=max_batch).start()
        closing.insert(0, shared.close)
        models = [_served(shared, base_name, vllm_base, base, base, context, vocab, max_batch)]
        models += [_served(shared, served_as, vllm_name, adapter, base, context, vocab, max_batch)
                   for served_as, vllm_name, adapter in adapters]
    except BaseException:
        for step in closing:
            try:
                step()
            except Exception:  # noqa: BLE001 - the first error is the one to tell
                log.debug("cleaning up after a failed start", exc_info=True)
        raise
    if chosen is not None:      # the default first: what the embedded engine would serve for this path
        models.sort(key=lambda m: m.name != chosen[0])
    log.info(f"engine vllm: serving {', '.join(m.name for m in models)} on {url}")
    return ServedModels(models, on_close=closing)


def _served(shared, name: str, vllm_name: str, model_dir: Path | str, base: str, context: int, vocab: int,
            max_batch: int) -> ServedModel:
    """One served name: its own tokenizer, chat template and generation config (an adapter's own, else its
    base's, as the embedded engine's merged model has), decoded by vLLM as `vllm_name`."""
    from transformers import AutoConfig, GenerationConfig

    from tunelab.decoding.generation_config import load_generation_config
    from tunelab.decoding.stops import stop_token_ids
    from tunelab.model.loading import load_tokenizer
    local = Path(model_dir).is_dir()
    generation = (load_generation_config(model_dir) if local else None) or \
        (load_generation_config(base) if Path(base).is_dir() else None)
    # what transformers gives a model without a generation_config.json: its config's eos, and no sampling
    holder = SimpleNamespace(generation_config=generation or GenerationConfig.from_model_config(
        AutoConfig.from_pretrained(base)))

    def make_engine(tokenizer):
        return shared.model(vllm_name, tokenizer, stop_token_ids(holder, tokenizer), context, vocab)
    return ServedModel(None, load_tokenizer(str(model_dir)), name, max_batch, Path(model_dir) if local else model_dir,
                       context_len=context, make_engine=make_engine, generation_config=generation)
