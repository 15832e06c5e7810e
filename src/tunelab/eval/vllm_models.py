"""Where an evaluation pass gets its models when `engine.kind` is vllm: one vLLM server, the base loaded once,
each checkpoint's LoRA adapter loaded by name for its turn and unloaded after it, never merged.

The server is one tunelab starts (`tunelab.decoding.vllm_server`, its log in the run's `vllm.log`, stopped when
the pass ends, whatever ends it) or one already running at `engine.url`. `open` gives the evaluation a
`VLLMEngine` where it would get a torch model; prompts, stop tokens and grading stay tunelab's.

What vLLM cannot do here is done by the embedded engine, and the run says so once, in one line:
- an adapter vLLM does not serve: IA³, VeRA, prompt tuning, LoRA with trained token rows
  (`lora.trainable_tokens`) or whole trained modules, DoRA, or a rank above `engine.max_lora_rank`;
- scoring prompts (log-likelihood choice, `base_agreement`'s base answers, perplexity): vLLM's prompt
  log-probabilities with LoRA enabled are mapped per request, not per token (vllm-project/vllm#16668).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from tunelab.decoding.vllm_engine import unservable
from tunelab.eval.resident import Reloading, model_source
from tunelab.recipe.engine import EngineConfig

log = logging.getLogger(__name__)

class VLLMModels:
    """An evaluation pass's models through vLLM (module docstring). `log_dir`: where the started server's log
    goes (`vllm.log`); `device` / `precision`: the embedded engine's, for what vLLM does not do, and the dtype
    the server computes in."""

    def __init__(self, config: EngineConfig, log_dir: str | Path, device=None, precision: str = "auto"):
        self.config = config
        self.log_dir = Path(log_dir)
        self.embedded: Reloading = model_source(device, precision)
        self.server = None
        self.engine = None
        self._base: str | None = None
        self._adapters = 0
        self._said: set[str] = set()

    def _say_once(self, what: str) -> None:
        if what not in self._said:
            self._said.add(what)
            log.warning(f"engine vllm: {what}")

    def _serve(self, base: str) -> None:
        """The engine for `base`: the running server at engine.url, else a server started for it (restarted when
        a pass moves to another base: a full fine-tune's checkpoints are models of their own)."""
        from tunelab.decoding.generation_config import load_generation_config
        from tunelab.decoding.vllm_engine import VLLMEngine
        from tunelab.decoding.vllm_server import VLLMServer, find_vllm_python
        if self._base == base and self.engine is not None:
            return
        self.close()
        c = self.config
        if c.url:
            probe = VLLMEngine(c.url, "")
            served = probe.served_models()
            probe.close()
            name = served[0] if served else base
            log.info(f"engine vllm: the server at {c.url} serves {name}; tunelab takes it as {base}")
            url = c.url
        else:
            name = Path(base).name or "base"
            self.server = VLLMServer(find_vllm_python(c.python), base, name, self.log_dir / "vllm.log",
                                     dtype=self.embedded.dtype, max_lora_rank=c.max_lora_rank,
                                     max_loras=c.max_loras, tensor_parallel=c.tensor_parallel,
                                     pipeline_parallel=c.pipeline_parallel,
                                     gpu_memory_utilization=c.gpu_memory_utilization, extra_args=c.extra_args,
                                     startup_timeout=c.startup_timeout).start()
            url = self.server.url
        self.engine = VLLMEngine(url, name, load_generation_config(base) if Path(base).is_dir() else None)
        self._base = base

    @contextmanager
    def open(self, path: str | Path):
        """(engine, tokenizer) of a model or adapter directory, for the `with` block: the base served, the
        adapter loaded under a name of its own and unloaded after the block. An adapter vLLM cannot serve: the
        embedded engine's (model, tokenizer), said once."""
        from tunelab.convert.resolve_model import resolve_model
        from tunelab.decoding.generation_config import load_generation_config
        from tunelab.model.loading import load_tokenizer
        resolved = resolve_model(path)
        why = unservable(resolved.adapter, self.config.max_lora_rank) if resolved.adapter else None
        if why:
            self._say_once(f"{resolved.adapter}: {why}; the embedded engine evaluates it")
            with self.embedded.open(path) as pair:
                yield pair
            return
        self._serve(resolved.base)
        engine = self.engine
        own = load_generation_config(resolved.adapter) if resolved.adapter else None
        engine.generation_config = own or (load_generation_config(resolved.base) if Path(resolved.base).is_dir()
                                           else None)
        tokenizer = load_tokenizer(str(resolved.adapter or resolved.base))
        if resolved.adapter is None:
            yield engine, tokenizer
            return
        self._adapters += 1
        name = f"{resolved.checkpoint or resolved.adapter.name}-{self._adapters}"
        engine.load_adapter(name, str(resolved.adapter))
        engine.adapter = name
        try:
            yield engine, tokenizer
        finally:
            engine.adapter = None
            engine.unload_adapter(name)

    @contextmanager
    def open_scorer(self, path: str | Path):
        """(model, tokenizer) in this process, for what scores prompts rather than generating (module
        docstring), said once."""
        self._say_once("scoring prompts (log-likelihood, perplexity, a base's own answers) runs on the embedded "
                       "engine: vLLM's prompt log-probabilities with LoRA enabled are not per token (vllm#16668)")
        with self.embedded.open(path) as pair:
            yield pair

    def adopt(self, path: str, model) -> bool:
        """A trained model is not handed to vLLM: its checkpoints are read from disk."""
        return False

    def close(self) -> None:
        """Unload what is loaded and stop the server tunelab started (a server at engine.url keeps running)."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.embedded.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        self._base = None


def models_for(engine: EngineConfig | None, log_dir: str | Path, device=None, precision: str = "auto"):
    """The pass's model source for the chosen engine: vLLM's (`VLLMModels`), else the embedded engine's
    (`tunelab.eval.resident.model_source`: a resident base on an accelerator, fresh loads on the CPU)."""
    if engine is not None and engine.kind == "vllm":
        return VLLMModels(engine, log_dir, device, precision)
    return model_source(device, precision)
