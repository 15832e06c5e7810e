"""The training loop: LoRA or full fine-tuning over packed rows, or pretraining on a corpus, readable top
to bottom.

One command runs on a CPU, one GPU, or several processes under `torchrun` / `accelerate launch`
(DDP, gloo on CPU): each rank takes a strided share of every step's rows. The loss projects only labelled
positions onto the vocabulary (`loss.py`); on CPU, LoRA dropout (`dropout.py`) and packed-row attention
(`model/attention.py`) use cheaper kernels that compute the same thing.

Rows come from examples (`RowStream`) or from a prepared corpus's memory-mapped blocks (`corpus_rows.py`).
A corpus run also measures the validation loss (`validation.py`) every `eval_every` steps and at every
checkpoint, marks the best checkpoint by it, and can stop early; a fine-tuning run that replays a corpus can
measure that corpus's validation loss the same way (logged and plotted, not used to choose or stop). Every
metrics line carries MFU (`mfu.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.packing import (Encoded, Row, batch_to, collate, encode_examples, pack_examples,
                                  packing_efficiency, shared_prefix, unpacked_rows)
from tunelab.data.sources import training_examples
from tunelab.data.templates import PromptTemplate
from tunelab.errors import Preempted, TunelabError
from tunelab.model.generation_config import eval_max_new_tokens
from tunelab.model.rotary import fast_rotary
from tunelab.recipe import Recipe, recipe_to_yaml
from tunelab.runs import best_checkpoint, checkpoint_dir, list_checkpoints, step_of
from tunelab.train.checkpoints import (ResumePoint, checkpoint_steps, find_resume_point, save_checkpoint,
                                      staging_dir)
from tunelab.train.divergence import DivergenceGuard
from tunelab.train.plots import plot_loss_curve, read_metrics
from tunelab.train.run_lock import run_lock
from tunelab.train.stop_signals import StopSignals
from tunelab.train.validation import EarlyStopping, val_record, validation_sums

log = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: object = None  # this process's torch.device (`model.device.resolve_device`)

    @property
    def main(self) -> bool:
        return self.rank == 0


# the collective backend of each accelerator; the host's tensors (the loop's reductions of counts and losses,
# all_gather_object) go through gloo in the same group: an NCCL-only group died at step 1 on them
DEVICE_BACKENDS = {"cuda": "nccl", "npu": "hccl"}


def init_distributed(device: str = "auto") -> Dist:
    """This process's device (`train.device`), and the process group when launched by torchrun/accelerate
    (WORLD_SIZE > 1): `cpu:gloo,cuda:nccl` on GPUs, so that both host and device tensors can be reduced."""
    import torch
    import torch.distributed as td

    from tunelab.model.device import resolve_device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local, field="train.device")
    if dev.type in ("cuda", "npu"):
        getattr(torch, dev.type).set_device(dev)
    if world <= 1:
        return Dist(device=dev)
    if not td.is_initialized():
        td.init_process_group("gloo" if dev.type == "cpu" else
                              f"cpu:gloo,{dev.type}:{DEVICE_BACKENDS.get(dev.type, 'gloo')}")
    return Dist(td.get_rank(), td.get_world_size(), local, dev)


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as td
        td.barrier()


def _all_sum(dist: Dist, values: list[float]) -> list[float]:
    if dist.world == 1:
        return values
    import torch
    import torch.distributed as td
    t = torch.tensor(values, dtype=torch.float64)
    td.all_reduce(t)
    return t.tolist()


def prepare_run_dir(recipe: Recipe, resume: bool, dist: Dist) -> Path:
    """Create the run directory; refuse to overwrite an existing run, and check a resumed recipe matches."""
    run_dir = recipe.run_dir
    saved = run_dir / "recipe.yaml"
    current = recipe_to_yaml(recipe)
    if resume:
        if not saved.exists():
            raise TunelabError("nothing to resume: no run here", file=run_dir)
        if _identity(saved.read_text(encoding="utf-8")) != _identity(current):
            raise TunelabError("the recipe differs from the one this run started with; resume needs the same "
                               "recipe (compare with the saved recipe.yaml)", file=saved)
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not _failed_during_setup(run_dir):
            raise TunelabError("run directory already exists; continue it with --resume or pick a new name with "
                               "--set name=NEW", file=run_dir)
        _barrier(dist)
        if dist.main:  # start afresh: a from-scratch tokenizer left there was trained on the failed recipe's data
            shutil.rmtree(run_dir / "tokenizer", ignore_errors=True)
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    _barrier(dist)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(current, encoding="utf-8")
    _barrier(dist)
    return run_dir


_SETUP_LEFTOVERS = {"recipe.yaml", "tokenizer", "metrics.jsonl"}


def _failed_during_setup(run_dir: Path) -> bool:
    """True when the directory holds only what a run that stopped before logging or checkpointing anything
    leaves behind (e.g. on a LoRA target that matches nothing): nothing worth protecting from a new start."""
    metrics = run_dir / "metrics.jsonl"
    return (all(p.name in _SETUP_LEFTOVERS for p in run_dir.iterdir())
            and not (metrics.exists() and metrics.read_text(encoding="utf-8").strip()))


def _identity(recipe_yaml: str) -> dict:
    """The parts of a saved recipe that define the run, as the current schema reads them (so a key added to
    the schema since the run started, at its default, is no difference); CPU threads, the divergence guard's
    settings and the memory check may change when resuming."""
    import yaml
    from pydantic import ValidationError
    raw = yaml.safe_load(recipe_yaml)
    try:
        raw = Recipe.model_validate(raw).model_dump(mode="json")
    except ValidationError:  # a key the schema no longer has: compared as written, so it differs
        pass
    raw.get("train", {}).pop("threads", None)
    raw.get("train", {}).pop("divergence", None)  # a run the guard stopped by mistake resumes with it changed
    raw.get("train", {}).pop("memory_check", None)
    return raw


def build_model_and_tokenizer(recipe: Recipe, examples, template: PromptTemplate, run_dir: Path, dist: Dist):
    """Load the base (path) or build it from a preset with a BPE tokenizer trained on the training text
    (a corpus run: the tokenizer the corpus was prepared with)."""
    from tunelab.model.loading import build_from_scratch, load_pretrained, load_tokenizer
    m = recipe.model
    corpus = recipe.data.corpus
    if not m.from_scratch:
        if m.path is None:
            raise TunelabError("a preset has no weights: set model.from_scratch: true, or give model.path",
                               field="model.preset")
        tokenizer = load_tokenizer(m.tokenizer or m.path)
        if m.quantization != "none":  # QLoRA: the frozen base quantised as it loads, onto this process's device
            from tunelab.model.quantization import load_quantized
            # its 4-bit layers compute at the training precision, set once the run knows it (`prepare_for_kbit`)
            model = load_quantized(m.path, m.quantization, device=dist.device, dtype=m.dtype)
        else:
            model = load_pretrained(m.path, m.dtype, dist.device)  # each rank straight onto its own device
    else:
        tok_dir = run_dir / "tokenizer"
        if m.tokenizer:
            tokenizer = load_tokenizer(m.tokenizer)
        elif corpus:
            tokenizer = load_tokenizer(str(Path(corpus) / "tokenizer"))
        else:
            if dist.main and not (tok_dir / "tokenizer.json").exists():
                from tunelab.model.tokenizer import train_bpe_tokenizer
                texts = (template.render(ex.instruction, ex.input) + ex.output for ex in examples)
                train_bpe_tokenizer(texts, m.tokenizer_vocab_size).save_pretrained(tok_dir)
            _barrier(dist)
            tokenizer = load_tokenizer(str(tok_dir))
        model = build_from_scratch(m.preset, len(tokenizer), m.overrides, tokenizer)
    if corpus and (m.tokenizer or not m.from_scratch):
        from tunelab.train.corpus_rows import check_corpus_tokenizer
        check_corpus_tokenizer(tokenizer, corpus)
    tokenizer.chat_template = template.chat_template()
    return model, tokenizer


# attention implementations that take the 4-D mask of rows with a shared prefix (`collate_rows`)
MASKED_ATTENTION = ("sdpa", "eager", "tunelab_cpu")


class RowStream:
    """The deterministic sequence of training rows: epoch e shuffles samples with seed+e, then packs them."""

    def __init__(self, encoded: list[Encoded], max_len: int, packing: bool, seed: int, prefix: int = 0):
        self.encoded, self.max_len, self.packing, self.seed, self.prefix = encoded, max_len, packing, seed, prefix
        self.epochs: list[list[Row]] = []

    def _epoch(self, e: int) -> list[Row]:
        while len(self.epochs) <= e:
            order = list(self.encoded)
            random.Random(self.seed + len(self.epochs)).shuffle(order)
            self.epochs.append(pack_examples(order, self.max_len, prefix=self.prefix) if self.packing
                               else unpacked_rows(order))
        return self.epochs[e]

    @property
    def rows_per_epoch(self) -> int:
        return len(self._epoch(0))

    @property
    def padding_pct(self) -> float:
        """Padding in a rows × max_len grid of the first epoch."""
        return 100 * (1 - packing_efficiency(self._epoch(0), self.max_len))

    def rows(self, start: int, count: int) -> list[Row]:
        """Rows [start, start+count) of the endless epoch-after-epoch stream."""
        out, e, offset = [], 0, start
        while offset >= len(self._epoch(e)):
            offset -= len(self._epoch(e))
            e += 1
        while len(out) < count:
            rows = self._epoch(e)
            take = rows[offset: offset + count - len(out)]
            out += take
            offset += len(take)
            if offset >= len(rows):
                e, offset = e + 1, 0
        return out


def lr_lambda(total: int, warmup: int, min_ratio: float):
    """Linear warmup, then cosine decay to `min_ratio` of the peak."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def train(recipe: Recipe, resume: bool = False, hand_over=None) -> dict:
    """Train per the recipe; returns a summary. Checkpoints and metrics.jsonl land in the run directory, which
    this process alone writes meanwhile (`run_lock`): another one writing it is an error before anything is
    written. SIGTERM/SIGUSR1 stop it after a checkpoint (`errors.Preempted`).

    `hand_over(base_path, model)` receives a finished LoRA run's model (its base still unmerged underneath), so
    that evaluation can keep the base on the device instead of loading it again (`model.resident`)."""
    # oneDNN (bf16 matmuls on CPU) keeps a compiled kernel for every shape it meets, up to 1,024 of them; the
    # row width and the count of labelled positions change shape every step, so memory grew ~5 MB a step
    # (0.4 -> 1.2 GB in 120 steps of a 0.2 M-parameter model). 64 holds what one step reuses; it is read at
    # the first bf16 matmul of the process.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    from tunelab.model.loading import quiet_transformers
    quiet_transformers()
    dist = init_distributed(recipe.train.device)
    with contextlib.ExitStack() as lock:
        refused = None
        if dist.main:
            try:
                lock.enter_context(run_lock(recipe.run_dir))
            except TunelabError as e:
                refused = e
        if _all_sum(dist, [1.0 if refused else 0.0])[0]:  # every rank stops, not rank 0 alone
            raise refused or TunelabError("another process is writing this run (rank 0 names it)",
                                          file=recipe.run_dir)
        with StopSignals() as signals:
            return _train(recipe, resume, dist, signals, hand_over)


def _train(recipe: Recipe, resume: bool, dist: Dist, signals: StopSignals, hand_over=None) -> dict:
    import torch
    from tqdm.auto import tqdm

    tc = recipe.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.optimizer != "adamw":  # missing bitsandbytes is found before the model loads, not after
        from tunelab.model.quantization import require_bitsandbytes
        require_bitsandbytes(f"train.optimizer: {tc.optimizer}", "train.optimizer")
    run_dir = prepare_run_dir(recipe, resume, dist)
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    device = dist.device
    from tunelab.model.device import training_precision
    precision = training_precision(tc.precision, device)
    if precision.note and dist.rank == 0:
        print(f"note: {precision.note}")
    if tc.memory_check:
        from tunelab.train.memory_plan import check_fits, gib
        plan, unfit = check_fits(recipe, device, dist.world)
        if unfit:
            raise TunelabError(unfit, field="train.memory_check")
        if plan is not None and dist.main:
            print(f"memory: about {gib(plan.total):.1f} GiB a device of {gib(plan.gpu_memory):.1f} GiB "
                  "(tunelab plan)")
    autocast_dtype = precision.autocast_dtype

    template = PromptTemplate(recipe.data.template, recipe.data.instruction_prefix, recipe.data.cot)
    examples = [] if recipe.data.corpus else training_examples(recipe)
    model, tokenizer = build_model_and_tokenizer(recipe, examples, template, run_dir, dist)
    val_rows = None  # validation rows: the val split of the corpus pretrained on, or of a replayed one when asked
    replayed_blocks = 0
    if recipe.data.corpus:
        from tunelab.train.corpus_rows import corpus_rows
        stream, val_rows = corpus_rows(recipe)
        samples, truncated = stream.count, 0
    else:
        encoded = encode_examples(tokenizer, template, examples, recipe.data.max_seq_len, recipe.data.loss_on)
        samples, truncated = len(encoded), sum(e.truncated for e in encoded)
        if recipe.data.replay is not None:
            from tunelab.train.corpus_rows import describe_replay, replay_for, validation_rows
            replayed = replay_for(recipe, tokenizer, encoded)
            if dist.main:
                print(describe_replay(recipe, replayed, encoded))
            encoded += replayed
            replayed_blocks = len(replayed)
            if tc.eval_every or tc.val_blocks:
                val_rows = validation_rows(recipe, recipe.data.replay.corpus)
                if dist.main and val_rows is not None:
                    when = f"every {tc.eval_every} steps and " if tc.eval_every else ""
                    print(f"validation: {val_rows.count:,} blocks of {recipe.data.replay.corpus}'s val split {when}"
                          "at each checkpoint (what fine-tuning costs its language modelling; the best checkpoint "
                          "is still chosen by the evaluated tasks)")
        prefix = 0
        if recipe.data.packing and recipe.data.share_prefix:
            attention = getattr(model.config, "_attn_implementation", None)
            if attention not in MASKED_ATTENTION:  # flash attention's packed path takes position ids, no 4-D mask
                why = f"the model's {attention} attention takes no 4-D mask"
            else:
                prefix = shared_prefix(encoded)
                why = "the samples share no prefix of 4 or more unlearnt tokens"
            if dist.main:
                print(f"share_prefix: {prefix} tokens every sample starts with are held once per row" if prefix
                      else f"share_prefix: off ({why})")
        stream = RowStream(encoded, recipe.data.max_seq_len, recipe.data.packing, recipe.seed, prefix)

    lora = recipe.lora.enabled
    if lora:
        from peft import get_peft_model

        from tunelab.model.lora import check_targets_matched, make_lora_config
        check_targets_matched(model, recipe.lora.target_modules)
        if recipe.model.quantization != "none":  # train.gradient_checkpointing, if asked, is turned on below
            from tunelab.model.quantization import prepare_for_kbit
            model = prepare_for_kbit(model, gradient_checkpointing=False, compute_dtype=autocast_dtype or torch.float32)
        model = get_peft_model(model, make_lora_config(recipe.lora.rank, recipe.lora.alpha, recipe.lora.dropout,
                                                       recipe.lora.target_modules))
        from tunelab.train.dropout import use_fast_lora_dropout
        use_fast_lora_dropout(model)
        if autocast_dtype is not None:
            from tunelab.model.lora import skip_lora_input_casts
            skip_lora_input_casts(model)
    model.to(device)
    if tc.gradient_checkpointing:
        from tunelab.model.activation_checkpointing import enable_activation_checkpointing
        enable_activation_checkpointing(model)
    from tunelab.train.loss import LabelledLoss
    loss_model = LabelledLoss(model)
    fsdp = tc.strategy == "fsdp" and dist.world > 1  # one process has nothing to shard across
    if fsdp:
        if precision.grad_scaler:
            raise TunelabError("train.strategy fsdp trains in bf16 or fp32, and this device would train in fp16 "
                               "with a gradient scaler: set train.precision: fp32, or train.strategy: ddp",
                               field="train.strategy")
        from tunelab.train import sharding
        sharding.shard(loss_model, model, device, dist.world, precision.name == "bf16", tc.cpu_offload)
        autocast_dtype = None  # the sharding's MixedPrecisionPolicy casts to bf16 for compute, not autocast
    flat = False  # packed rows laid end to end, no padding computed (`collate_flat`)
    if device.type == "cpu":  # checkpoints keep the model's own attention setting: it is not saved in config.json
        from tunelab.model.attention import takes_flat_rows, use_cpu_attention
        base = model.get_base_model() if lora else model
        use_cpu_attention(base)
        flat = recipe.data.packing and takes_flat_rows(base, recipe.data.max_seq_len)
    from tunelab.model.lora import count_parameters
    trainable, total = count_parameters(model)
    from tunelab.train.mfu import flops_per_token, measure_peak_tflops, mfu
    flops_tok = flops_per_token(model, recipe.data.max_seq_len)
    peak_tflops = tc.peak_tflops or measure_peak_tflops(device, precision.name)

    point = _find_resume_point(run_dir, dist) if resume else None
    rows_per_step = _rows_per_step(tc.batch_size, tc.grad_accum, dist.world, point)
    total_steps = tc.max_steps or max(1, int(tc.epochs * stream.rows_per_epoch // rows_per_step))
    ckpt_at = set(checkpoint_steps(total_steps, tc.num_checkpoints))
    if recipe.data.corpus and dist.main:
        tqdm.write(f"corpus: {stream.count:,} training blocks in {stream.rows_per_epoch:,} rows of up to "
                   f"{recipe.data.max_seq_len} tokens per epoch ({stream.padding_pct:.1f}% padding, "
                   f"{'packed' if recipe.data.packing else 'one block a row'}"
                   f"{', laid end to end: no padding computed' if flat else ''}); validation on "
                   f"{val_rows.count if val_rows else 0:,} blocks")

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    # one fused kernel for the whole update instead of a dozen foreach passes over every tensor: 1.3 ms
    # against 9.6 ms a step for the 4 M `tiny` model on 2 CPU cores (the same update, to rounding)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    from tunelab.train.optimizers import build_optimizer
    optimizer = build_optimizer([{"params": decay, "weight_decay": tc.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], tc.optimizer, lr=tc.lr,
                                betas=(0.9, 0.95), fused=fused)
    warmup = max(1, int(tc.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, tc.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.type) if precision.grad_scaler else None

    start_step, elapsed_before = 0, 0.0
    stopper = EarlyStopping(tc.early_stopping_patience, tc.early_stopping_min_delta)
    stopped_early_at = None
    # loss/items/tokens summed since the last metrics line; saved in checkpoints so that a resumed run
    # writes the same metrics lines as an uninterrupted one even when checkpoints fall between log steps
    window = (0.0, 0.0, 0.0, 0.0)
    last_loss = float("nan")
    metrics_path = run_dir / "metrics.jsonl"
    guard = DivergenceGuard(**tc.divergence.model_dump())
    if resume:
        if point is not None:
            note = _restore(point, loss_model, optimizer, scheduler, scaler, dist, fsdp)
            if note and dist.main:
                print(f"note: {note}")
            ts = point.trainer_state
            start_step, elapsed_before = ts["step"], ts["elapsed_s"]
            window = ts.get("log_window", window)
            if len(window) == 3:  # a checkpoint from before sample tokens were counted
                window = (*window, window[2])
            if "early_stopping" in ts:
                stopper.best, stopper.bad = ts["early_stopping"]["best"], ts["early_stopping"]["bad"]
            guard.load(ts.get("divergence", {}))
            stopped_early_at = ts.get("stopped_early_at")
            # the loss a run killed after its last checkpoint (before the summary) resumes to report
            last_loss = point.state["loss"]
        if dist.main:  # drop log lines past the checkpoint; they are recomputed
            kept = [r for r in read_metrics(metrics_path) if r["step"] <= start_step]
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    elif dist.main:
        metrics_path.write_text("", encoding="utf-8")

    train_model = loss_model
    if dist.world > 1 and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_model = DDP(loss_model, device_ids=[device.index] if device.type in DEVICE_BACKENDS else None)
    train_model.train()

    finished = run_dir / "train_summary.json"
    end_step = stopped_early_at or total_steps
    if start_step >= end_step and finished.exists():  # resuming a finished run: nothing left to train
        return json.loads(finished.read_text(encoding="utf-8"))
    def save(done: int, loss: float, val: dict | None, preemption: bool) -> None:
        rng = _gather_rng(dist)  # every rank's: each draws its own dropout masks
        weights = None
        if fsdp:  # collectives: the shards into the staging directory, the whole weights to rank 0's host
            staging = staging_dir(run_dir, done)
            if dist.main:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            _barrier(dist)
            sharding.save_sharded(staging, loss_model, optimizer)
            weights = sharding.full_trainable_state(model) if lora else sharding.full_model_state(loss_model)
        if not dist.main:
            return
        if fsdp:
            trained = {"sharded": True}
        else:
            trained = {"trainable": {n: p.detach().cpu().clone() for n, p in model.named_parameters()
                                     if p.requires_grad}, "optimizer": optimizer.state_dict()}
        trainer_state = {**trained, "scheduler": scheduler.state_dict(), "rng": rng,
                         "grad_scaler": scaler.state_dict() if scaler else None,
                         "log_window": (window_loss, window_items, window_tokens, window_samples),
                         "early_stopping": stopper.state(), "divergence": guard.state(),
                         "stopped_early_at": stopped_early_at, "rows_per_step": rows_per_step,
                         "step": done, "elapsed_s": elapsed_before + time.perf_counter() - t_start}
        state = {"step": done, "loss": loss, "total_steps": total_steps,
                 "val_loss": val["val_loss"] if val else None}
        if preemption:
            state["preemption"] = True
        save_checkpoint(run_dir, done, model, tokenizer, template, trainer_state, state, lora=lora,
                        save_merged=tc.save_merged, max_new_tokens=eval_max_new_tokens(recipe.eval),
                        weights=weights, staged=fsdp)

    bar = tqdm(total=total_steps, initial=start_step, disable=not dist.main, desc=f"train {recipe.name}",
               unit="step", dynamic_ncols=True)
    window_loss, window_items, window_tokens, window_samples = window
    postfix: dict[str, str] = {}
    t_window = time.perf_counter()
    t_start = time.perf_counter()
    # the fast rotary path stays in place for the whole loop, not only each forward: a checkpointed layer is
    # recomputed in the backward pass, and must run the same function there (else torch's CheckpointError)
    rotary_scope = fast_rotary(model)
    rotary_scope.__enter__()
    try:  # the bar is closed however the loop ends, so an error is a line of its own
        for step in range(start_step, end_step):
            step_rows = stream.rows(step * rows_per_step, rows_per_step)[dist.rank::dist.world]
            micro = [step_rows[i: i + tc.batch_size] for i in range(0, len(step_rows), tc.batch_size)]
            batches = [collate(rows, tokenizer.pad_token_id, recipe.data.packing, flat) for rows in micro]
            local_items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
            local_tokens = sum(len(r.input_ids) for r in step_rows)
            local_samples = sum(r.sample_tokens for r in step_rows)
            global_items = _all_sum(dist, [local_items])[0]
            step_loss = 0.0
            for i, batch in enumerate(batches):
                batch = batch_to(batch, device)
                sync = i == len(batches) - 1 or dist.world == 1
                if fsdp:
                    sharding.set_gradient_sync(loss_model, sync)
                ctx = train_model.no_sync() if not (sync or fsdp) else contextlib.nullcontext()
                autocast = torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                          enabled=autocast_dtype is not None)
                with ctx, autocast:
                    loss = train_model(**batch, num_items_in_batch=max(1, global_items))
                scaled = loss * dist.world  # DDP averages gradients over ranks; undo it for a global sum
                (scaler.scale(scaled) if scaler else scaled).backward()
                step_loss += loss.item()
            step_loss, tokens, sample_tokens = _all_sum(dist, [step_loss, local_tokens, local_samples])
            if scaler:
                scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
            grad_norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()  # FSDP: a DTensor
            # fp16: an overflowing gradient is the scaler's to handle (it skips the step and lowers the scale)
            overflow = scaler is not None and math.isfinite(step_loss) and not math.isfinite(grad_norm)
            if not overflow and not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                # checked before optimizer.step(): a NaN/inf gradient would poison the weights (and the next
                # checkpoint) even while the loss still looks finite
                what = (f"loss became {step_loss}" if not math.isfinite(step_loss)
                        else f"gradient norm became {grad_norm}")
                kept = list_checkpoints(run_dir)
                raise TunelabError(f"{what} at step {step + 1}; stopping. Last good checkpoint: "
                                   f"{kept[-1] if kept else 'none'} (try a lower train.lr)", field="train.lr")
            diverged = None if overflow else guard.update(step_loss, grad_norm)
            if diverged:
                good = [c for c in list_checkpoints(run_dir) if step_of(c) <= step + 1 - guard.since]
                raise TunelabError(f"{diverged}; stopping at step {step + 1}. Last good checkpoint: "
                                   f"{good[-1] if good else 'none'} (try a lower train.lr; train.divergence has the "
                                   "thresholds and the off switch)", field="train.lr")
            step_lr = scheduler.get_last_lr()[0]
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            last_loss = step_loss
            window_loss += step_loss * global_items
            window_items += global_items
            window_tokens += tokens
            window_samples += sample_tokens
            done = step + 1
            val, stop = None, False
            if val_rows is not None and (done in ckpt_at or (tc.eval_every and done % tc.eval_every == 0)):
                t_val = time.perf_counter()
                val = val_record(done, *_all_sum(dist, list(validation_sums(
                    loss_model, val_rows, tc.batch_size, tokenizer.pad_token_id, recipe.data.packing, device,
                    autocast_dtype, dist.rank, dist.world, flat))))
                t_window += time.perf_counter() - t_val  # tokens/s and MFU count training time only
                stop = stopper.update(val["val_loss"]) and done < total_steps  # at the last step: simply the end
            if done % tc.log_every == 0 or done == total_steps or stop:
                now = time.perf_counter()
                tokens_per_s = window_tokens / (now - t_window)
                rec = {"step": done, "epoch": round(done * rows_per_step / stream.rows_per_epoch, 4),
                       "loss": window_loss / max(1, window_items), "lr": step_lr,
                       "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
                       "mfu": mfu(flops_tok, tokens_per_s, peak_tflops, dist.world),
                       "elapsed_s": elapsed_before + now - t_start}
                if stream.prefix:  # the samples' tokens, the shared prefix counted once per sample (what unshared rows feed)
                    rec["sample_tokens_per_s"] = window_samples / (now - t_window)
                if dist.main:
                    with metrics_path.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(rec) + "\n")
                postfix.update(loss=f"{rec['loss']:.4f}", tok_s=f"{tokens_per_s:.0f}")
                bar.set_postfix(postfix)
                window_loss = window_items = window_tokens = window_samples = 0.0
                t_window = now
            if val is not None:
                if dist.main:
                    with metrics_path.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(val) + "\n")
                postfix["val"] = f"{val['val_loss']:.4f}"
                bar.set_postfix(postfix)
            bar.update(1)
            if stop:
                stopped_early_at = done
            if done in ckpt_at or stop:
                save(done, step_loss, val, preemption=False)
                _barrier(dist)
            if not stop and done < end_step and _all_sum(dist, [float(signals.received is not None)])[0]:
                if done not in ckpt_at:
                    save(done, step_loss, val, preemption=True)
                    _barrier(dist)
                signals.acknowledge()
                raise Preempted(f"{signals.received or 'a stop signal'} received: stopped after step {done} of "
                                f"{total_steps}, checkpoint {checkpoint_dir(run_dir, done).name} is written",
                                file=run_dir)
            if stop:
                break
    finally:
        bar.close()
        rotary_scope.__exit__(None, None, None)
    elapsed = elapsed_before + time.perf_counter() - t_start
    # the lowest validation loss marks the best checkpoint of pretraining only: a fine-tuning run's best is decided
    # by its evaluated tasks (a replayed corpus's loss says what fine-tuning cost, not how well it did)
    best, best_val = best_checkpoint(run_dir) if recipe.data.corpus else (None, None)
    train_lines = [r for r in read_metrics(metrics_path) if "loss" in r]
    logged = train_lines[1:] or train_lines
    summary = {"steps": stopped_early_at or total_steps, "resumed_from": start_step, "final_loss": last_loss,
               "train_seconds": elapsed, "trainable_params": trainable, "total_params": total,
               "samples": samples, "replayed_blocks": replayed_blocks, "truncated": truncated, "rows_per_epoch": stream.rows_per_epoch,
               "padding_pct": stream.padding_pct, "flat_rows": flat, "world_size": dist.world, "precision": precision.name,
               "checkpoints": [str(p) for p in list_checkpoints(run_dir)],
               "best_checkpoint": best, "best_val_loss": best_val, "stopped_early_at": stopped_early_at,
               "flops_per_token": flops_tok, "peak_tflops": peak_tflops,
               "hardware": _hardware(device, dist.world),
               # medians over the logged windows after the first (warm-up)
               "tokens_per_s": _median([r["tokens_per_s"] for r in logged]),
               "mfu": _median([r["mfu"] for r in logged if "mfu" in r])}
    if stream.prefix:
        summary["shared_prefix"] = stream.prefix
        summary["sample_tokens_per_s"] = _median([r["sample_tokens_per_s"] for r in logged
                                                  if "sample_tokens_per_s" in r])
    if dist.main:
        from tunelab.records import write_json
        write_json(run_dir / "train_summary.json", summary)
        title = f"{recipe.name}: training and validation loss" if best else f"{recipe.name}: training loss"
        plot_loss_curve(metrics_path, run_dir / "loss.png", title=title)
    if hand_over is not None and lora and not fsdp:
        hand_over(recipe.model.path, model)
    return summary


def _rows_per_step(batch_size: int, grad_accum: int, world: int, point: ResumePoint | None) -> int:
    """Rows per optimizer step: micro-batch × accumulation × processes, or, resuming, what the run started with
    (a run resumed on another number of processes keeps its global batch by accumulating more or fewer
    micro-batches per process: the same data per step, the same schedule)."""
    rows = batch_size * grad_accum * world
    started = point.trainer_state.get("rows_per_step", rows) if point is not None else rows
    if started != rows:
        if started % (batch_size * world):
            raise TunelabError(f"this run takes {started} rows a step; {world} process{'es' if world > 1 else ''} "
                               f"of {batch_size}-row micro-batches cannot divide them: resume on a number of "
                               "processes that does", field="train.batch_size")
        log.warning("resuming on %d process%s: %d micro-batches each per step keep the run's %d rows a step",
                    world, "es" if world > 1 else "", started // (batch_size * world), started)
    return started


def _find_resume_point(run_dir: Path, dist: Dist) -> ResumePoint | None:
    """The main process sets damaged checkpoints aside first; then every rank finds the same one."""
    point = find_resume_point(run_dir, main=True) if dist.main else None
    _barrier(dist)
    return point if dist.main else find_resume_point(run_dir, main=False)


def _restore(point: ResumePoint, loss_model, optimizer, scheduler, scaler, dist: Dist, fsdp: bool) -> str | None:
    """The trainable weights, the optimizer, the scheduler, the fp16 gradient scaler and this rank's RNGs as
    they were at the checkpoint; a note when the checkpoint was written by another number of processes (the
    ranks it had not are seeded from rank 0's state, so their dropout differs from an unbroken run's)."""
    import torch
    ts = point.trainer_state
    if ts.get("sharded"):  # any number of processes, sharded or not: DCP reshards on load
        from tunelab.train import sharding
        sharding.load_sharded(point.ckpt, loss_model, optimizer)
    elif fsdp:
        raise TunelabError("this checkpoint was written by one process or under DDP, and the run now shards its "
                           "model (train.strategy fsdp): resume it on one process or with train.strategy ddp",
                           file=point.ckpt)
    else:
        named = dict(loss_model.model.named_parameters())
        with torch.no_grad():
            for name, value in ts["trainable"].items():
                named[name].copy_(value)
        optimizer.load_state_dict(ts["optimizer"])
    scheduler.load_state_dict(ts["scheduler"])
    if scaler is not None and ts.get("grad_scaler"):
        scaler.load_state_dict(ts["grad_scaler"])
    # before per-rank states, a checkpoint held rank 0's CPU and Python RNGs and every visible GPU's
    rngs = ts.get("rng") or [{"torch": ts["torch_rng"], "py": ts["py_rng"], "all_cuda": ts.get("cuda_rng")}]
    mine = rngs[dist.rank] if dist.rank < len(rngs) else rngs[0]
    torch.set_rng_state(mine["torch"])
    random.setstate(mine["py"])
    device = dist.device
    if mine.get("device") is not None and device.type in DEVICE_BACKENDS:
        getattr(torch, device.type).set_rng_state(mine["device"], device)
    elif mine.get("all_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["all_cuda"])
    if len(rngs) != dist.world:
        return (f"the checkpoint was written by {len(rngs)} process{'es' if len(rngs) > 1 else ''} and the run "
                f"resumes on {dist.world}: the random state of ranks {len(rngs)}..{dist.world - 1} starts from rank 0's, "
                "so dropout differs from an unbroken run" if dist.world > len(rngs) else
                f"the checkpoint was written by {len(rngs)} processes and the run resumes on {dist.world}: the random "
                f"state of ranks {dist.world}..{len(rngs) - 1} is not used")
    return None


def _gather_rng(dist: Dist) -> list[dict]:
    """Every rank's CPU, Python and device RNG states, in rank order (a collective: every rank calls it)."""
    import torch
    state = {"torch": torch.get_rng_state(), "py": random.getstate()}
    if dist.device is not None and dist.device.type in DEVICE_BACKENDS:
        state["device"] = getattr(torch, dist.device.type).get_rng_state(dist.device)
    if dist.world == 1:
        return [state]
    import torch.distributed as td
    out: list = [None] * dist.world
    td.all_gather_object(out, state)
    return out


def _hardware(device, world: int) -> str:
    """What trained, for the hand-in's description: "2 x NVIDIA A100-SXM4-80GB" or "AMD EPYC 7B13 (2 threads)"."""
    import torch

    from tunelab.train.mfu import machine_name
    name = machine_name(str(device))
    if device.type == "cpu":
        name += f" ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"
    return f"{world} x {name}" if world > 1 else name


def _median(values: list[float]) -> float | None:
    import statistics
    return statistics.median(values) if values else None

