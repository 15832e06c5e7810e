"""Checkpoints: evenly spaced over the run, written atomically, each a set of plain HF directories; and the
way back into a run from the newest whole one.

Layout of `checkpoints/step-000120/`:
  adapter/   LoRA adapter + tokenizer (peft `PeftModel.from_pretrained` loads it)      [LoRA runs]
  model/     full model + tokenizer (`AutoModelForCausalLM.from_pretrained` loads it) [full runs, or merged]
  trainer_state.pt  optimizer, scheduler and RNG states for --resume (its keys, both ways: `trainer_state.py`)
  state.json        step, last training loss, total steps, and (corpus runs) the validation loss there
  manifest.json     written last: every file's size and checksum (`tunelab.checkpoint_manifest`)

Where checkpoints live in a run and which one is best: `tunelab.runs`.

Each model/adapter directory holds a generation_config.json with the decoding the run's evaluation scores it
with (`tunelab.decoding.generation_config`): plain `transformers`, `tunelab serve` and `tunelab ui` then decode
the checkpoint as `tunelab eval` did unless asked otherwise.

A run stopped on request (`stop_signals.py`) writes a *preemption* checkpoint at the step it stopped, outside
the evenly spaced ones; the resumed run removes it once it has written the next regular checkpoint, so the
finished run holds the same checkpoints as one never stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunelab.checkpoint_manifest import has_manifest, manifest_problems, write_manifest
from tunelab.data.templates import save_template
from tunelab.errors import TunelabError
from tunelab.records import free_space, write_refusal
from tunelab.run_format import migrate
from tunelab.runs import checkpoint_dir, checkpoint_dirs, is_preemption, list_checkpoints, set_aside

log = logging.getLogger(__name__)


def checkpoint_steps(total_steps: int, n: int) -> list[int]:
    """N evenly spaced steps ending at the last one, e.g. (100, 5) -> [20, 40, 60, 80, 100]."""
    n = min(n, total_steps)
    return sorted({round(total_steps * k / n) for k in range(1, n + 1)})


def staging_dir(run_dir: Path, step: int) -> Path:
    """Where a checkpoint is written before it is renamed into place."""
    final = checkpoint_dir(run_dir, step)
    return final.with_name(final.name + ".tmp")


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, template, trainer_state: dict, state: dict,
                    lora: bool, save_merged: bool, max_new_tokens: int, weights: dict | None = None,
                    staged: bool = False) -> Path:
    """Write into a temporary directory, list its files in the manifest, and rename it into place, so a kill
    never leaves half a checkpoint. A write the disk refuses (full, quota, I/O error) removes the partial
    directory and is one error naming the file and the free space; the earlier checkpoints are untouched.
    `max_new_tokens`: the evaluation's answer length (`eval_max_new_tokens`), saved in generation_config.json.
    `weights`: the state dict to save when the model's own parameters are shards (FSDP); `staged`: the
    staging directory already holds files the ranks wrote (`sharding.save_sharded`)."""
    final = checkpoint_dir(run_dir, step)
    tmp = staging_dir(run_dir, step)
    writing = [tmp]  # what is being written now, for the error
    try:
        if not staged:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _write_files(tmp, model, tokenizer, template, trainer_state, state, lora, save_merged, max_new_tokens,
                     writing, weights)
        writing.append(tmp / "manifest.json")
        write_manifest(tmp)
        if final.exists():  # a step directory that is not whole (else training would have resumed past it)
            set_aside(final)
        os.replace(tmp, final)
        _sync_dir(final.parent)
    except BaseException as e:
        reason = write_refusal(e)
        free = free_space(run_dir) if reason else ""  # as the write met it, before the partial files go
        shutil.rmtree(tmp, ignore_errors=True)
        if reason is None:
            raise
        kept = list_checkpoints(run_dir)
        raise TunelabError(
            f"could not write {writing[-1].relative_to(run_dir)}: {reason} ({free} free on that "
            f"disk). Nothing is lost: the partial checkpoint was removed and "
            f"{'checkpoint ' + kept[-1].name + ' is whole' if kept else 'no earlier checkpoint was written'}; "
            "free some space, then resume the run", file=run_dir, resumable=True) from e
    if not state.get("preemption"):
        for ckpt in list_checkpoints(run_dir):  # superseded preemption checkpoints (module docstring)
            if ckpt != final and is_preemption(ckpt):
                shutil.rmtree(ckpt)
    return final


def _write_files(tmp: Path, model, tokenizer, template, trainer_state: dict, state: dict, lora: bool,
                 save_merged: bool, max_new_tokens: int, writing: list[Path], weights: dict | None) -> None:
    import torch

    from tunelab.decoding.generation_config import write_generation_config
    dirs = []
    given = {} if weights is None else {"state_dict": weights}
    if lora:
        writing.append(tmp / "adapter")
        model.save_pretrained(tmp / "adapter", selected_adapters=["default"], **given)  # not a frozen reference
        from tunelab.model.base_record import record_base_model  # the base, found again after a move
        record_base_model(tmp / "adapter", model.peft_config["default"].base_model_name_or_path)
        dirs.append(tmp / "adapter")
        if save_merged:
            writing.append(tmp / "model")
            _save_merged(model, tmp / "adapter", tmp / "model")
            dirs.append(tmp / "model")
    else:
        writing.append(tmp / "model")
        model.save_pretrained(tmp / "model", **given)
        dirs.append(tmp / "model")
    for d in dirs:
        writing.append(d)
        tokenizer.save_pretrained(d)
        save_template(template, d)
        write_generation_config(d, model, tokenizer, max_new_tokens)
    writing.append(tmp / "trainer_state.pt")
    torch.save(trainer_state, tmp / "trainer_state.pt")
    writing.append(tmp / "state.json")
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def _sync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a power cut after it keeps the new name); a no-op where directories
    cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _save_merged(peft_model, adapter: Path, out: Path) -> None:
    """The adapter merged into the base weights, built on the host from the adapter just saved and the base on
    disk: a copy of the training model (the obvious way) would need a second model's memory on the GPU, which
    an 8B run on a 24 GB card does not have. The training model is left untouched. A LoRA model built from
    scratch has no base on disk: it is copied to the host and merged there."""
    import copy

    import torch
    base = peft_model.peft_config["default"].base_model_name_or_path
    dtype = str(next(peft_model.get_base_model().parameters()).dtype).removeprefix("torch.")
    if base and Path(base).is_dir():
        from peft import PeftModel

        from tunelab.model.loading import load_pretrained
        # loading initialises weights before it reads them, which draws from torch's RNG: the run's stream
        # (its dropout masks) must not depend on whether checkpoints are merged
        with torch.random.fork_rng(devices=[]):
            merged = PeftModel.from_pretrained(load_pretrained(base, dtype), adapter).merge_and_unload()
    else:
        merged = copy.deepcopy(peft_model).to(torch.device("cpu")).merge_and_unload()
    merged.save_pretrained(out)


@dataclass
class ResumePoint:
    """The newest checkpoint a run can continue from: its directory, its trainer state (`trainer_state.pt`)
    and its `state.json`."""

    ckpt: Path
    trainer_state: dict
    state: dict

    @property
    def step(self) -> int:
        return self.trainer_state["step"]


class _Unloadable(Exception):
    """A checkpoint file that is there with its size but does not load (damaged without a manifest to say)."""


def _load(ckpt: Path) -> tuple[dict, dict]:
    """A checkpoint's trainer state and state.json, onto the host (any rank, any device count)."""
    import torch
    out = []
    for name, read in (("trainer_state.pt", lambda p: torch.load(p, map_location="cpu", weights_only=False)),
                       ("state.json", lambda p: json.loads(p.read_text(encoding="utf-8")))):
        try:
            value = read(ckpt / name)
        except Exception as e:  # a truncated zip (PytorchStreamReader), an empty or cut JSON, bad bytes
            why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise _Unloadable(f"{name} does not load ({why})") from e
        if not isinstance(value, dict) or (name == "trainer_state.pt" and "step" not in value):
            raise _Unloadable(f"{name} is not what tunelab writes")
        if name == "trainer_state.pt":
            value = migrate(value, "trainer_state", ckpt / name)
        out.append(value)
    return out[0], out[1]


def _damage(ckpt: Path) -> str | None:
    """What keeps a checkpoint from being resumed, in a few words; None when it is whole and loads."""
    if has_manifest(ckpt):
        problems = manifest_problems(ckpt)
        if problems:
            return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    elif not (ckpt / "state.json").is_file():
        return "state.json: missing"
    return None


def find_resume_point(run_dir: Path, main: bool) -> ResumePoint | None:
    """The newest checkpoint that is whole and loads. On the main process, every newer one that is damaged
    (its manifest does not match, or its trainer state or state.json does not load) is reported in one line
    and moved aside (`runs.set_aside`), never deleted; the other ranks call this after it (a barrier between)
    and find the same checkpoint. None when the run has no checkpoint to continue from."""
    for ckpt in reversed(checkpoint_dirs(run_dir)):
        problem = _damage(ckpt) if main else None
        if problem is None:
            try:
                return ResumePoint(ckpt, *_load(ckpt))
            except _Unloadable as e:
                if not main:
                    raise TunelabError(f"cannot resume: {e}", file=ckpt) from e
                problem = str(e)
        moved = set_aside(ckpt)
        log.warning("checkpoint %s is damaged: %s; moved aside to %s, resuming from the one before it",
                    ckpt.name, problem, moved.name)
    return None
