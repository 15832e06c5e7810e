"""LLaMA-Factory's supervised fine-tuning with `neat_packing`, timed the way `bench_train.py` times HF's Trainer.

Run by `bench_train.py --llamafactory-python PY` with PY an interpreter of a venv where `llamafactory` installs (it
pins transformers <= 5.6, trl <= 0.24, peft <= 0.18.1 and datasets <= 4.0, so it cannot share tunelab's):

    PY llamafactory_sft.py JOB.json RESULT.json

JOB.json holds LLaMA-Factory's own training arguments (`args`, as its YAML files do) and the timing (`seconds` of
timed steps after `warm_steps`, `threads`). LLaMA-Factory trains through `run_exp`, its CLI's entry, on its own data
pipeline (alpaca-format JSON, its template, its knapsack packing, its block-diagonal mask); this file only
timestamps each optimizer step's end, counts each step's real tokens (non-zero `attention_mask`, LLaMA-Factory's
packed rows number their samples from 1 and mark padding 0) and stops after `seconds`. It imports nothing of
tunelab's.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import sys
import time
import types


def stub_torchaudio() -> None:
    """LLaMA-Factory imports torchaudio at the top of its multimodal plugins, which a text job never calls. PyPI's
    only torchaudio builds are for CUDA torch releases other than the CPU torch 2.13 both sides run here (their
    extension fails to load), so where it does not import, an empty module stands in for it."""
    try:
        if importlib.util.find_spec("torchaudio") is not None:
            importlib.import_module("torchaudio")
            return
    except OSError:
        pass
    module = types.ModuleType("torchaudio")
    module.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = module


def main() -> int:
    job = json.loads(open(sys.argv[1], encoding="utf-8").read())
    import torch
    torch.set_num_threads(job["threads"])
    stub_torchaudio()
    from transformers import TrainerCallback

    import llamafactory
    from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
    from llamafactory.train.tuner import run_exp

    warm, seconds = job["warm_steps"], job["seconds"]
    ends: list[float] = []
    tokens: list[int] = []
    shapes: list[list[int]] = []

    collate = SFTDataCollatorWith4DAttentionMask.__call__

    def counting_collate(self, features):
        # one collated batch per optimizer step (grad_accum 1, no dataloader workers)
        tokens.append(sum(sum(1 for m in f["attention_mask"] if m) for f in features))
        batch = collate(self, features)
        shapes.append(list(batch["input_ids"].shape))
        return batch

    SFTDataCollatorWith4DAttentionMask.__call__ = counting_collate

    class Budget(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())
            if len(ends) > warm and ends[-1] - ends[warm - 1] >= seconds:
                control.should_training_stop = True
            return control

    t0 = time.perf_counter()
    run_exp(job["args"], callbacks=[Budget()])
    wall = time.perf_counter() - t0
    timed = sum(tokens[warm:len(ends)])
    span = ends[-1] - ends[warm - 1]
    steps = len(ends) - warm
    result = {"tokens": timed, "seconds": span, "steps": steps, "all_steps": len(ends), "tok_s": timed / span,
              "sec_per_step": span / steps, "mean_real_tokens_per_step": timed / steps,
              "batch_shape": shapes[warm] if len(shapes) > warm else None,
              "wall_s": wall, "llamafactory": llamafactory.__version__, "torch": torch.__version__,
              "torchaudio_stubbed": not hasattr(sys.modules.get("torchaudio"), "__version__")}
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
