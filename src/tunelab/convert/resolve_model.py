"""One way to turn a named model into a loadable one: `resolve_model(name)` -> `ResolvedModel`.

Every verb that takes a model (`run` / `train` through `model.path`, `plan`, `data check`, `eval`, `predict`,
`serve`, `ui`, `generate`) names it the same ways, and each kind has one rule:

    run directory        (has checkpoints/)   its best checkpoint (`which="last"`: its last), as
                                              `tunelab.runs.pick_checkpoint` chooses it; then as a checkpoint
    checkpoint directory (state.json or a manifest)   checked whole, then its model/ (merged or full), else its
                                              adapter/ (`tunelab.runs.model_dir_of`); then as below
    adapter directory    (adapter_config.json)   the adapter, on the base its run recorded
                                              (`tunelab.model.base_record.resolve_base_model`)
    model directory      (config.json)        itself: a merged or full model, base and what is loaded at once
    GGUF file            (*.gguf, or one inside an installed package)   dequantised once into the conversion
                                              cache (`tunelab.convert.gguf_import`); converted = "gguf"
    MindFormers .ckpt    (*.ckpt)             with its MindFormers YAML (`mindformers_config`) and a tokenizer
                                              (`tokenizer`, else HF tokenizer files beside the .ckpt) converted
                                              once into the cache (`tunelab.convert.mindformers`);
                                              converted = "mindformers .ckpt"
    hub id               (org/name, no such path here)   itself: `from_pretrained` fetches it (or its cache)
    anything else                             one TunelabError naming the file

The result keeps the base and the adapter apart (`base`, `adapter`), so a loader can hold one base and put
adapters on it by name; `path` is what `tunelab.model.loading.load_for_inference` takes (the adapter when there
is one, else the base).

Conversions are cached on disk under a key of the source files, so the same name gives the same directory in
every process. Under torchrun only rank 0 should convert: the others pass `convert=False` and wait for the
directory rank 0 writes (it appears whole, by a rename), then resolve to the same path.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

GGUF = "gguf"
MINDFORMERS_CKPT = "mindformers .ckpt"
_WAIT_SECONDS = 6 * 3600   # how long another rank waits for rank 0's conversion
_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class ResolvedModel:
    """A named model made loadable. `base`: the full model's directory (or hub id) the weights come from;
    `adapter`: the adapter directory on it, or None; `run` / `checkpoint`: the run directory and the checkpoint
    name (`step-000120`) when a run or a checkpoint was named; `converted`: what was converted to get `base`
    (`"gguf"`, `"mindformers .ckpt"`) or None; `given`: the name as given."""

    given: str
    base: str
    adapter: Path | None = None
    run: Path | None = None
    checkpoint: str | None = None
    converted: str | None = None

    @property
    def path(self) -> str:
        """What one load takes: the adapter directory (loaded onto its base), else the base."""
        return str(self.adapter) if self.adapter is not None else self.base

    @property
    def local(self) -> bool:
        """Whether it is on this machine (not a hub id)."""
        return Path(self.path).exists()

    @property
    def label(self) -> str:
        """A short name: the checkpoint's, a converted file's stem, else the directory's (or the hub id)."""
        if self.checkpoint:
            return self.checkpoint
        given = Path(self.given.rstrip("/\\"))
        return (given.stem if self.converted else given.name) or self.given


def resolve_model(name: str | Path, *, which: str = "best", mindformers_config: str | Path | None = None,
                  tokenizer: str | Path | None = None, convert: bool = True,
                  field: str | None = "model.path") -> ResolvedModel:
    """The model `name` names, by the rule for its kind (the module docstring). `which`: a run's `best` or
    `last` checkpoint; `mindformers_config` / `tokenizer`: what a MindFormers .ckpt needs beside it (a recipe's
    `model.mindformers_config` / `model.tokenizer`); `convert=False`: another process converts (rank 0 of a
    torchrun launch), this one waits for its result; `field`: where `name` came from, for errors."""
    given = str(name)
    p = Path(given).expanduser()
    if given.lower().endswith(".gguf"):
        return ResolvedModel(given, str(_gguf(given, convert, field)), converted=GGUF)
    if given.lower().endswith(".ckpt") and not p.is_dir():
        return ResolvedModel(given, str(_mindformers(p, mindformers_config, tokenizer, convert, field)),
                             converted=MINDFORMERS_CKPT)
    if not p.exists():
        from tunelab.model.base_record import looks_like_hub_id
        if looks_like_hub_id(given):
            return ResolvedModel(given, given)
        raise TunelabError("model not found (expected a run directory, a checkpoint, a model or adapter directory, "
                           "a .gguf or MindFormers .ckpt file, or a hub id as org/name)", file=given, field=field)
    from tunelab.runs import is_run_dir, pick_checkpoint
    run = p if p.is_dir() and is_run_dir(p) and not _is_model_dir(p) else None
    model_dir = pick_checkpoint(p, which)   # a run's chosen checkpoint, a checkpoint's model/adapter, or p itself
    checkpoint = model_dir.parent.name if model_dir != p else None
    if (model_dir / "adapter_config.json").is_file():
        from tunelab.model.base_record import resolve_base_model
        return ResolvedModel(given, resolve_base_model(model_dir), adapter=model_dir, run=run, checkpoint=checkpoint)
    return ResolvedModel(given, str(model_dir), run=run, checkpoint=checkpoint)


def _is_model_dir(p: Path) -> bool:
    return (p / "config.json").is_file() or (p / "adapter_config.json").is_file()


def _gguf(given: str, convert: bool, field: str | None) -> Path:
    from tunelab.convert.gguf_import import gguf_converted_dir, hf_dir_for_gguf
    if convert:
        return hf_dir_for_gguf(given, field=field)
    return _wait_for(gguf_converted_dir(given, field=field), given)


def _mindformers(ckpt: Path, config: str | Path | None, tokenizer: str | Path | None, convert: bool,
                 field: str | None) -> Path:
    """The converted directory of a MindFormers .ckpt: it needs its YAML (the shapes) and a tokenizer (a .ckpt
    holds none): the one given, else Hugging Face tokenizer files in the .ckpt's own folder."""
    from tunelab.convert.mindformers import ckpt_converted_dir, hf_dir_for_ckpt
    if not ckpt.is_file():
        raise TunelabError("MindFormers checkpoint not found", file=ckpt, field=field)
    if config is None:
        raise TunelabError("a MindFormers .ckpt needs its MindFormers YAML, whose model_config gives the shapes: "
                           "give model.mindformers_config in a recipe (--mindformers-config on the command line)",
                           file=ckpt, field=field)
    if tokenizer is None:
        beside = ckpt.parent
        if any((beside / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            tokenizer = beside
        else:
            raise TunelabError("a MindFormers .ckpt holds no tokenizer, and no Hugging Face tokenizer files are beside "
                               "it: give the tokenizer directory (model.tokenizer in a recipe, --tokenizer on the "
                               "command line)", file=ckpt, field=field)
    if convert:
        return hf_dir_for_ckpt(ckpt, config, tokenizer)
    return _wait_for(ckpt_converted_dir(ckpt, config, tokenizer), ckpt)


def _wait_for(out: Path, source: str | Path) -> Path:
    """The conversion another process (rank 0) is writing to `out`: it appears whole, by a rename, with its
    config.json."""
    deadline = time.monotonic() + _WAIT_SECONDS
    if not (out / "config.json").is_file():
        log.info(f"waiting for rank 0 to convert {source} into {out} (a node that does not share rank 0's "
                 "TUNELAB_CACHE waits in vain)")
    while not (out / "config.json").is_file():
        if time.monotonic() > deadline:
            raise TunelabError(f"rank 0 did not finish converting it into {out} (on several machines, "
                               "TUNELAB_CACHE must be on a filesystem every node shares: rank 0 converts into its "
                               "own)", file=source)
        time.sleep(_POLL_SECONDS)
    return out
