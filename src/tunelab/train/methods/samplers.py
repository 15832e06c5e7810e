"""Who draws a sampling method's answers (GRPO's and RFT's rollouts), chosen by the recipe's `engine:`.

- `OwnModel` (engine.kind embedded, the default): the training model itself, through the embedded engine, in eval
  mode (no dropout) with its adapter on, under the training precision's autocast and SDPA attention. Its draws are
  the policy's exactly: there is no mismatch to correct.
- `VLLMPolicy` (engine.kind vllm): a vLLM server holding the base once; after each optimizer step the policy's
  adapter alone is written (`adapter_model.safetensors`, a few MB) and loaded under a new name
  (`policy-step<N>`), the previous one unloaded and its files removed — never merged (axolotl's
  `vllm_lora_sync`, TRL's server mode). vLLM computes in its own kernels, so its probabilities are close to the
  trainer's but not equal: it returns each drawn token's log-probability (after temperature and top-p on a server
  tunelab starts: `--logprobs-mode processed_logprobs`), and GRPO's loss corrects by the ratio trainer / sampler
  (`train.grpo.sampler_correction`, `grpo_loss.sampler_ratio`). RFT needs none: it fine-tunes on the answers the
  grader accepts, whoever drew them.

With several training processes, rank 0 writes and loads each adapter and every rank waits for it (a barrier)
before drawing from it; every rank talks to the same server.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ADAPTER_DIR = "policy_adapters"   # under the run directory while the run trains; removed when it ends


@dataclass
class Draws:
    """A rollout's answers (token ids, a kept stop token last), and where the sampler is not the trainer, the
    sampler's log-probability of each of their tokens (NaN where it gave none)."""

    completions: list[list[int]]
    logps: list[list[float]] | None = None


class OwnModel:
    """The training model draws its own answers (module docstring)."""

    kind = "embedded"

    def __init__(self, model, pad_id: int):
        from tunelab.decoding.embedded import EmbeddedEngine
        self.model = model
        self.engine = EmbeddedEngine(model, pad_id, generator_device="cpu")  # the host's generators, as always

    def draw(self, prompts: list[list[int]], seeds: list[int], sampling, max_new_tokens: int,
             stops: frozenset[int], step: int) -> Draws:
        from tunelab.model.eval_mode import eval_mode
        from tunelab.model.kernels.attention import decoding_attention
        with eval_mode(self.model), decoding_attention(self.model):
            completions, _ = self.engine.decode(prompts, max_new_tokens, stops, batch_size=len(prompts),
                                                sampling=sampling, seeds=seeds, keep_stop=True)
        return Draws(completions)

    def close(self) -> None:
        pass


class VLLMPolicy:
    """The policy's answers drawn by a vLLM server (`engine`, a `VLLMEngine` serving the base), its adapter synced
    after each optimizer step from `model` (the training peft model) through `folder` (module docstring).
    `main`: this process writes and loads; `wait()`: every process's barrier."""

    kind = "vllm"

    def __init__(self, engine, model, folder: Path, main: bool = True, wait=lambda: None):
        self.engine, self.model, self.folder, self.main, self.wait = engine, model, Path(folder), main, wait
        self.synced: int | None = None   # the optimizer step whose weights the server holds

    def _name(self, step: int) -> str:
        return f"policy-step{step}"

    def sync(self, step: int) -> str:
        """The adapter as it is after `step` optimizer steps loaded on the server (once a step): its name."""
        name = self._name(step)
        if self.synced == step:
            return name
        if self.main:
            path = self.folder / name
            shutil.rmtree(path, ignore_errors=True)
            # the trained adapter alone: a continued run's frozen reference copy stays home
            self.model.save_pretrained(path, selected_adapters=["default"])
            self.engine.load_adapter(name, str(path))
            if self.synced is not None:
                old = self._name(self.synced)
                self.engine.unload_adapter(old)
                shutil.rmtree(self.folder / old, ignore_errors=True)
            log.info(f"step {step + 1}: answers drawn by vLLM with {name} (the adapter after {step} optimizer "
                     "steps, loaded unmerged)")
        self.wait()
        self.synced = step
        return name

    def draw(self, prompts: list[list[int]], seeds: list[int], sampling, max_new_tokens: int,
             stops: frozenset[int], step: int) -> Draws:
        self.engine.adapter = self.sync(step)
        logps: list[list[float]] = []
        completions, _ = self.engine.decode(prompts, max_new_tokens, stops, sampling=sampling, seeds=seeds,
                                            keep_stop=True, logps=logps)
        return Draws(completions, logps)

    def close(self) -> None:
        """The loaded adapter unloaded (a server at engine.url keeps running) and the adapters' folder removed."""
        if self.main:
            self.engine.close()
            shutil.rmtree(self.folder, ignore_errors=True)


def vllm_policy(recipe, model, dist, precision, held) -> VLLMPolicy | None:
    """The run's `VLLMPolicy` when `engine.kind` is vllm and the run can sample through it, else None (the run's
    own model draws, and a line says why). The server (started on rank 0 unless `engine.url` names one; its log
    the run's `vllm.log`) and the sampler are closed by `held` (an ExitStack) however the run ends."""
    from tunelab.decoding.vllm_engine import VLLMEngine, unservable
    from tunelab.decoding.vllm_server import VLLMServer, find_vllm_python
    from tunelab.train.distributed import all_sum, barrier
    c = recipe.engine
    if c.kind != "vllm":
        return None
    why = None
    if not recipe.lora.enabled:
        why = "a full fine-tune's weights would cross to the server every step; only a LoRA adapter does"
    elif recipe.train.strategy == "fsdp" and dist.world > 1:
        why = "train.strategy fsdp shards the adapter across processes, and the sampler needs it whole"
    else:
        why = unservable(model.peft_config["default"].to_dict(), c.max_lora_rank)
    if why:
        if dist.main:
            log.warning(f"engine vllm: {why}; the training model draws the {recipe.train.method} answers itself "
                        "(the embedded engine)")
        return None
    base = model.peft_config["default"].base_model_name_or_path
    name = Path(base).name or "base"
    port = 0.0
    if c.url:
        url = c.url
        if dist.main and not _processed(recipe):
            log.warning(f"engine vllm: the server at {c.url} is not tunelab's: its log-probabilities are taken as "
                        "after temperature and top-p; start it with --logprobs-mode processed_logprobs, or GRPO's "
                        "sampler correction reads the raw ones")
        probe = VLLMEngine(url, "")
        served = probe.served_models()
        probe.close()
        name = served[0] if served else name
    elif dist.main:
        dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision.name, "float32")
        server = VLLMServer(find_vllm_python(c.python), base, name, Path(recipe.run_dir) / "vllm.log", dtype=dtype,
                            max_lora_rank=c.max_lora_rank, max_loras=c.max_loras, tensor_parallel=c.tensor_parallel,
                            pipeline_parallel=c.pipeline_parallel, gpu_memory_utilization=c.gpu_memory_utilization,
                            extra_args=["--logprobs-mode", "processed_logprobs", *c.extra_args],
                            startup_timeout=c.startup_timeout)
        held.enter_context(server)
        port = float(server.port)
    if not c.url:
        port = all_sum(dist, [port])[0]  # rank 0's server, known to every rank
        url = f"http://127.0.0.1:{int(port)}"
    engine = VLLMEngine(url, name, getattr(model, "generation_config", None))
    policy = VLLMPolicy(engine, model, Path(recipe.run_dir) / ADAPTER_DIR, dist.main, lambda: barrier(dist))
    held.callback(policy.close)
    return policy


def _processed(recipe) -> bool:
    """Whether raw and processed log-probabilities are the same for the method's sampling (temperature 1, no
    top-p or top-k): then a server's default (raw) serves the correction as well."""
    s = getattr(recipe.train, recipe.train.method)
    return s.temperature == 1.0 and s.top_p == 1.0 and not s.top_k
