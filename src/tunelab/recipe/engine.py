"""The recipe's `engine:` section: which engine decodes the run's tokens (evaluation, rollouts, serving).

`embedded` (the default) is tunelab's own decoding core: nothing to install, the same tokens on every verb. `vllm`
is vLLM's OpenAI-compatible server, in an interpreter of its own (its torch and transformers pins are never the
project's): a server already running at `url` (a cluster's tensor-parallel deployment, used as it is), else one
tunelab starts from `python`, `TUNELAB_VLLM_PYTHON`, vLLM importable in tunelab's own interpreter, or
`.venv-vllm/bin/python` under the project root, in that order (`tunelab.decoding.vllm_server`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunelab.recipe.fields import StrictSection, Text

ENGINE_KINDS = ("embedded", "vllm")


class EngineConfig(StrictSection):
    kind: Literal["embedded", "vllm"] = Field(
        default="embedded", description="embedded: tunelab's own decoding core; vllm: vLLM's OpenAI-compatible "
                                        "server (its own interpreter, or a running server at url)")
    url: Text | None = Field(default=None, description="a vLLM server already running (http://host:port); "
                                                       "tunelab starts none and stops none")
    python: Text | None = Field(default=None, description="the interpreter to start vLLM's server from (also "
                                                          "TUNELAB_VLLM_PYTHON); default: .venv-vllm/bin/python")
    tensor_parallel: int = Field(default=1, ge=1, description="vLLM's --tensor-parallel-size")
    pipeline_parallel: int = Field(default=1, ge=1, description="vLLM's --pipeline-parallel-size")
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="vLLM's --gpu-memory-utilization (on its CPU build: the share of "
                                              "host memory it reserves); default: vLLM's on a GPU, 0.2 on a CPU")
    max_lora_rank: int = Field(default=16, ge=1, description="the largest LoRA rank the server takes "
                                                             "(vLLM's --max-lora-rank)")
    max_loras: int = Field(default=4, ge=1, description="adapters held at once (vLLM's --max-loras)")
    startup_timeout: float = Field(default=600.0, gt=0, description="seconds to wait for a started server")
    extra_args: list[str] = Field(default_factory=list, description="further arguments to vLLM's server, as "
                                                                    "its command line takes them")

    @model_validator(mode="after")
    def _server_settings_need_a_server_to_start(self):
        """`url` names a server someone else runs: its settings are theirs, so any set here would be ignored."""
        if self.url is not None:
            if self.kind != "vllm":
                raise ValueError("'url' names a vLLM server: give kind: vllm")
            set_here = [f for f in ("python", "gpu_memory_utilization") if getattr(self, f) is not None]
            set_here += [f for f in ("tensor_parallel", "pipeline_parallel") if getattr(self, f) != 1]
            set_here += ["extra_args"] if self.extra_args else []
            if set_here:
                raise ValueError(f"{', '.join(set_here)} start a server; with 'url' the running server's own "
                                 "settings hold (drop them, or drop url)")
        return self
