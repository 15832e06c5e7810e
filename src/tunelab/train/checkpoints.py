"""Checkpoints: evenly spaced over the run, written atomically, each a set of plain HF directories.

Layout of `checkpoints/step-000120/`:
  adapter/   LoRA adapter + tokenizer (peft `PeftModel.from_pretrained` loads it)      [LoRA runs]
  model/     full model + tokenizer (`AutoModelForCausalLM.from_pretrained` loads it) [full runs, or merged]
  trainer_state.pt  optimizer, scheduler and RNG states for --resume
  state.json        step, last training loss, total steps, and (corpus runs) the validation loss there

Where checkpoints live in a run and which one is best: `tunelab.runs`.

Each model/adapter directory holds a generation_config.json with the decoding the run's evaluation scores it
with (`tunelab.model.generation_config`): plain `transformers`, `tunelab serve` and `tunelab ui` then decode
the checkpoint as `tunelab eval` did unless asked otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tunelab.data.templates import save_template
from tunelab.runs import checkpoint_dir


def checkpoint_steps(total_steps: int, n: int) -> list[int]:
    """N evenly spaced steps ending at the last one, e.g. (100, 5) -> [20, 40, 60, 80, 100]."""
    n = min(n, total_steps)
    return sorted({round(total_steps * k / n) for k in range(1, n + 1)})


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, template, trainer_state: dict, state: dict,
                    lora: bool, save_merged: bool, max_new_tokens: int) -> Path:
    """Write into a temporary directory and rename it into place, so a kill never leaves half a checkpoint.
    `max_new_tokens`: the evaluation's answer length (`eval_max_new_tokens`), saved in generation_config.json."""
    import torch

    from tunelab.model.generation_config import write_generation_config
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dirs = []
    if lora:
        model.save_pretrained(tmp / "adapter")
        dirs.append(tmp / "adapter")
        if save_merged:
            _save_merged(model, tmp / "model")
            dirs.append(tmp / "model")
    else:
        model.save_pretrained(tmp / "model")
        dirs.append(tmp / "model")
    for d in dirs:
        tokenizer.save_pretrained(d)
        save_template(template, d)
        write_generation_config(d, model, tokenizer, max_new_tokens)
    torch.save(trainer_state, tmp / "trainer_state.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _save_merged(peft_model, out: Path) -> None:
    """Merge a copy of the adapter into the base weights; the training model is left untouched."""
    import copy
    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.save_pretrained(out)
