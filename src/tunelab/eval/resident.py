"""Where an evaluation pass gets its models: loaded afresh for each directory, or one base held on the device
with each checkpoint's adapter swapped in.

A run evaluates the base and every checkpoint. Loading each one afresh and merging its adapter is right on
the CPU, where a small model loads in a moment and merged weights decode ~25 % faster than LoRA's extra
matmuls (measured on the quickstart's evaluation: 3.3-3.9 s merged, 4.1-4.3 s unmerged). On a GPU it is six
loads of 16 GB for Llama-3-8B, so there the base is loaded once (`ResidentBase`): a checkpoint's adapter is
loaded beside the base weights through peft's multi-adapter API and used unmerged (what vLLM does for LoRA),
the previous adapter deleted, and the base itself is evaluated with the adapter layers switched off, which
runs each base layer alone, bit for bit. A directory on another base (or a full checkpoint) replaces the held
model, the old one freed first.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager, nullcontext
from pathlib import Path

from tunelab.model import loading
from tunelab.model.device import inference_dtype, resolve_device


def model_source(device: str | None = None, precision: str = "auto", field: str = "eval.device"):
    """The source an evaluation pass on `device` should use: one resident base on an accelerator, a fresh
    merged load per directory on the CPU (module docstring)."""
    dev = resolve_device(device, field=field)
    return (Reloading if dev.type == "cpu" else ResidentBase)(dev, precision)


class Reloading:
    """Each directory loaded afresh (an adapter merged into its base) and dropped after use."""

    def __init__(self, device, precision: str = "auto"):
        loading.quiet_transformers()
        self.device, self.dtype = device, inference_dtype(precision, device)

    @contextmanager
    def open(self, path: str | Path):
        """(model, tokenizer) of a full or adapter directory, for the `with` block."""
        yield loading.load_for_inference(str(path), dtype=self.dtype, merge=True, device=self.device)

    def open_scorer(self, path: str | Path):
        """(model, tokenizer) for scoring prompts: the same model `open` gives (a remote engine's source gives
        one in this process instead: `tunelab.eval.vllm_models`)."""
        return self.open(path)

    def adopt(self, path: str, model) -> bool:
        """Nothing is held between directories: a trained model handed over is let go."""
        return False

    def close(self) -> None:
        """Nothing is held between directories."""


class ResidentBase(Reloading):
    """One base model kept on the device across `open` calls; adapters on it are swapped, never merged."""

    def __init__(self, device, precision: str = "auto"):
        super().__init__(device, precision)
        self._key, self._base, self._peft, self._adapter = None, None, None, None
        self.loads = self.swaps = 0  # bases loaded and adapters swapped in: what the reuse saved is visible

    @contextmanager
    def open(self, path: str | Path):
        path = str(path)
        loading.check_model_path(path, field="model")
        if loading.is_adapter_dir(path):
            base_path = loading.adapter_base(path)
            self._hold(base_path)
            if self._adapter is None or self._adapter[0] != str(Path(path).resolve()):
                self.swaps += 1
                name = f"adapter{self.swaps}"
                self._peft = loading.attach_adapter(self._base, path, base_path, onto=self._peft, name=name)
                self._peft.set_adapter(name)
                if self._adapter is not None:
                    self._peft.delete_adapter(self._adapter[1])
                self._adapter = (str(Path(path).resolve()), name)
            self._peft.eval()
            yield self._peft, loading.load_tokenizer(path)
            return
        self._hold(path)
        with self._peft.disable_adapter() if self._peft is not None else nullcontext():
            yield (self._peft or self._base), loading.load_tokenizer(path)

    def adopt(self, path: str, model) -> bool:
        """Hold the model a LoRA run just trained as the base at `path`, instead of loading it again: its LoRA
        layers are taken out without merging (peft's `unload`), which leaves the base weights as loaded, bit
        for bit. Only a model on this source's device in its dtype, not quantised (a QLoRA run's checkpoints are
        evaluated on the unquantised base, as they are handed in); otherwise False and it is let go."""
        import torch
        if not hasattr(model, "unload"):  # a full fine-tune ends on its last checkpoint's weights, not the base
            return False
        base = model.get_base_model()
        if (next(base.parameters()).device != torch.device(self.device) or getattr(base, "is_quantized", False)
                or str(base.dtype).removeprefix("torch.") != self.dtype):
            return False
        self.close()
        base = model.unload()
        base.requires_grad_(False)
        if getattr(base, "is_gradient_checkpointing", False):
            base.gradient_checkpointing_disable()
        from tunelab.model.kernels.attention import NAME as TRAINING_ATTENTION
        if getattr(base.config, "_attn_implementation", None) == TRAINING_ATTENTION:
            base.set_attn_implementation("sdpa")  # the CPU training kernel; decoding is shaped for sdpa
        base.eval()
        self._base, self._key = base, self._key_of(path)
        return True

    @staticmethod
    def _key_of(path: str) -> str:
        return str(Path(path).resolve()) if Path(path).exists() else path

    def _hold(self, path: str) -> None:
        """Keep the model at `path` on the device, loading it only when another one is held."""
        key = self._key_of(path)
        if key == self._key:
            return
        self.close()
        self._base = loading.load_pretrained(path, self.dtype, self.device)
        self._base.eval()
        self._key = key
        self.loads += 1

    def close(self) -> None:
        """Free the held model (and its adapters) before another is loaded or the pass ends."""
        import torch
        self._key = self._base = self._peft = self._adapter = None
        gc.collect()
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
