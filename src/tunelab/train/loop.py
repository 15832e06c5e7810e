"""The training loop: LoRA or full fine-tuning over packed rows, or pretraining on a corpus, readable top
to bottom: setup -> maybe restore -> for each step: batches, forward and backward, optimizer step, metrics,
validation, checkpoint, stop checks -> summary.

The pieces live beside it, each in a file named for what it holds: what the run is built from, in the order
that fixes its random draws (`setup.py`), what a checkpoint's trainer state holds, saved and restored in one
place (`trainer_state.py`), the files of a checkpoint (`checkpoints.py`), the processes (`distributed.py`),
and the summary (`summary.py`). The step itself stays here, in the order it runs.

One command runs on a CPU, one GPU, or several processes under `torchrun` / `accelerate launch`
(DDP, gloo on CPU): each rank takes a strided share of every step's rows. The loss projects only labelled
positions onto the vocabulary (`loss.py`); on CPU, LoRA dropout (`dropout.py`) and packed-row attention
(`model/attention.py`) use cheaper kernels that compute the same thing.

Rows come from examples (`row_stream.py`) or from a prepared corpus's memory-mapped blocks (`corpus_rows.py`).
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
from pathlib import Path

from tunelab.data.packing import batch_to
from tunelab.data.sources import training_examples
from tunelab.data.templates import recipe_template
from tunelab.errors import Preempted, TunelabError
from tunelab.model.generation_config import eval_max_new_tokens
from tunelab.model.rotary import fast_rotary
from tunelab.recipe import Recipe
from tunelab.runs import checkpoint_dir, list_checkpoints, step_of
from tunelab.track.names import step_metrics
from tunelab.train import sharding
from tunelab.train.checkpoints import checkpoint_steps, save_checkpoint, staging_dir
from tunelab.train.methods import METHODS
from tunelab.train.distributed import Dist, all_sum, barrier, data_parallel, init_distributed
from tunelab.train.divergence import DivergenceGuard
from tunelab.train.plots import read_metrics
from tunelab.train.run_dir import prepare_run_dir
from tunelab.train.run_lock import run_lock
from tunelab.train.setup import (build_model_and_tokenizer, build_optimization, check_memory, choose_precision,
                                 continued_adapter, count_steps, trainable_model, trainable_token_ids,
                                 training_rows)
from tunelab.train.stop_signals import StopSignals
from tunelab.train.summary import training_summary, write_summary
from tunelab.train.trainer_state import (Progress, capture, gather_objects, gather_rng, global_batch, rank_window,
                                         restore, resume_point)
from tunelab.train.validation import EarlyStopping

log = logging.getLogger(__name__)


def train(recipe: Recipe, resume: bool = False, hand_over=None, on_checkpoint=None, rewards=None) -> dict:
    """Train per the recipe; returns a summary. Checkpoints and metrics.jsonl land in the run directory, which
    this process alone writes meanwhile (`run_lock`): another one writing it is an error before anything is
    written. SIGTERM/SIGUSR1 stop it after a checkpoint (`errors.Preempted`).

    `hand_over(base_path, model)` receives a finished LoRA run's model (its base still unmerged underneath), so
    that evaluation can keep the base on the device instead of loading it again (`model.resident`).

    `on_checkpoint(path, info)` is called in the main process after each evenly spaced checkpoint is whole, with
    `info` = its step, its index among the run's checkpoints (1 = the first), its validation loss and the
    (trainable, total) parameter counts: what a sweep needs to judge the run so far. An exception it raises
    (a pruned trial) ends training there, the checkpoint kept, as any other error would.

    `rewards` (a `tunelab.eval.rewards.Rewards`) scores a `grpo` run's completions; the pipeline builds it from
    `train.grpo.rewards` (train/ does not import the tasks whose graders it calls)."""
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
        if all_sum(dist, [1.0 if refused else 0.0])[0]:  # every rank stops, not rank 0 alone
            raise refused or TunelabError("another process is writing this run (rank 0 names it)",
                                          file=recipe.run_dir)
        with StopSignals() as signals:
            return _train(recipe, resume, dist, signals, hand_over, on_checkpoint, rewards)


def _train(recipe: Recipe, resume: bool, dist: Dist, signals: StopSignals, hand_over=None,
           on_checkpoint=None, rewards=None) -> dict:
    import torch
    from tqdm.auto import tqdm

    # --- setup: everything the steps need, in an order that fixes the random draws (`setup.py`) ---
    tc = recipe.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.optimizer != "adamw":  # missing bitsandbytes is found before the model loads, not after
        from tunelab.model.quantization import require_bitsandbytes
        require_bitsandbytes(f"train.optimizer: {tc.optimizer}", "train.optimizer")
    from tunelab.track.base import check_trackers
    check_trackers(list(recipe.report_to))  # a tracker that is not installed is found before anything is written
    run_dir = prepare_run_dir(recipe, resume, dist)
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    device = dist.device
    precision = choose_precision(tc, dist)
    if tc.memory_check:
        check_memory(recipe, dist)
    template = recipe_template(recipe.data)
    method = METHODS[tc.method]
    examples = [] if recipe.data.corpus or tc.method == "dpo" else training_examples(recipe)
    model, tokenizer = build_model_and_tokenizer(recipe, examples, template, run_dir, dist)
    template = template.resolve(tokenizer, recipe.model.path)  # `auto`: the base's own template when it has one
    rows = training_rows(recipe, examples, model, tokenizer, template, dist)
    stream, val_rows = rows.stream, rows.val_rows
    token_ids = (trainable_token_ids(recipe, model, tokenizer, rows.answer_counts, dist, rows.encoded)
                 if recipe.lora.enabled and not continued_adapter(recipe) else [])  # a continued adapter has its own
    trained = trainable_model(recipe, model, precision, dist, token_ids, tokenizer, rewards)
    model, loss_model, lora, fsdp, flat = trained.model, trained.loss_model, trained.lora, trained.fsdp, trained.flat
    autocast_dtype = trained.autocast_dtype
    from tunelab.model.lora import count_parameters
    params_count = count_parameters(model)
    from tunelab.train.mfu import flops_per_token, measure_peak_tflops, mfu
    flops_tok = flops_per_token(model, recipe.data.max_seq_len)
    peak_tflops = tc.peak_tflops or measure_peak_tflops(device, precision.name)

    point = resume_point(run_dir, dist) if resume else None
    rows_per_step = global_batch(tc.batch_size, tc.grad_accum, dist.world, point)
    passes = method.passes(recipe)  # optimizer steps per step's rows: grpo's num_iterations, else 1
    total_steps, untrained = count_steps(tc, stream.rows_per_epoch, rows_per_step, passes)
    ckpt_at = set(checkpoint_steps(total_steps, tc.num_checkpoints))
    if recipe.data.corpus and dist.main:
        log.info(f"corpus: {stream.count:,} training blocks in {stream.rows_per_epoch:,} rows of up to "
                 f"{recipe.data.max_seq_len} tokens per epoch ({stream.padding_pct:.1f}% padding, "
                 f"{'packed' if recipe.data.packing else 'one block a row'}"
                 f"{', laid end to end: no padding computed' if flat else ''}); validation on "
                 f"{val_rows.count if val_rows else 0:,} blocks")
    if untrained and dist.main:  # the last partial step is dropped: say so, the step count stays
        log.info(f"note: rows not trained on: {untrained:,} of the {int(tc.epochs * stream.rows_per_epoch):,} of "
              f"{tc.epochs:g} epoch{'' if tc.epochs == 1 else 's'}, too few to fill a last step of {rows_per_step} "
              "rows; train.batch_size and train.grad_accum (and the number of processes) change how many")
    opt = build_optimization(tc, model, total_steps, precision, device)
    optimizer, scheduler, scaler = opt.optimizer, opt.scheduler, opt.scaler

    # --- maybe restore: the weights, optimizer, schedule, random state and the loop's counters (`trainer_state.py`)
    progress = Progress(EarlyStopping(tc.early_stopping_patience, tc.early_stopping_min_delta),
                        DivergenceGuard(**tc.divergence.model_dump()))
    metrics_path = run_dir / "metrics.jsonl"
    if resume:
        if point is not None:
            note = restore(point, loss_model, optimizer, scheduler, scaler, dist, fsdp)
            if note and dist.main:
                log.info(f"note: {note}")
            progress.resumed(point)
            if hasattr(loss_model, "window"):
                loss_model.set_window(rank_window(point.trainer_state, dist.rank))
        if dist.main:  # drop log lines past the checkpoint; they are recomputed
            logged = read_metrics(metrics_path)
            progress.count_lost(logged)
            kept = [r for r in logged if r["step"] <= progress.step]
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    elif dist.main:
        metrics_path.write_text("", encoding="utf-8")

    train_model = data_parallel(loss_model, dist, fsdp)
    train_model.train()
    finished = run_dir / "train_summary.json"
    start_step, end_step = progress.step, progress.stopped_early_at or total_steps
    if start_step >= end_step and finished.exists():  # resuming a finished run: nothing left to train
        return json.loads(finished.read_text(encoding="utf-8"))

    def save(done: int, loss: float, val: dict | None, preemption: bool) -> None:
        rng = gather_rng(dist)  # every rank's: each draws its own dropout masks
        # every rank's loss module window too: its sums, and a grpo generation batch still to be trained on
        windows = gather_objects(dist, loss_model.window()) if hasattr(loss_model, "window") else None
        weights = None
        if fsdp:  # collectives: the shards into the staging directory, the whole weights to rank 0's host
            staging = staging_dir(run_dir, done)
            if dist.main:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            barrier(dist)
            sharding.save_sharded(staging, loss_model, optimizer)
            weights = sharding.full_trainable_state(model) if lora else sharding.full_model_state(loss_model)
        if not dist.main:
            return
        trainer_state = capture(model, optimizer, scheduler, scaler, rng, progress, rows_per_step, done,
                                progress.elapsed_s + time.perf_counter() - t_start, sharded=fsdp,
                                loss_window=windows)
        state = {"step": done, "loss": loss, "total_steps": total_steps,
                 "val_loss": val["val_loss"] if val else None}
        if preemption:
            state["preemption"] = True
        save_checkpoint(run_dir, done, model, tokenizer, template, trainer_state, state, lora=lora,
                        save_merged=tc.save_merged, max_new_tokens=eval_max_new_tokens(recipe.eval),
                        weights=weights, staged=fsdp)

    # --- the steps ---
    trackers = None
    if dist.main:  # the dashboards get every metrics line (`tunelab.track`); a resumed run continues its own
        from tunelab.track.run import open_run_trackers
        trackers = open_run_trackers(recipe, run_dir, resume_step=start_step if resume else None)
    bar = tqdm(total=total_steps, initial=start_step, disable=not dist.main, desc=f"train {recipe.name}",
               unit="step", dynamic_ncols=True)
    window = progress.window  # loss × items, items, tokens, sample tokens since the last metrics line
    postfix: dict[str, str] = {}
    t_window = time.perf_counter()
    t_start = time.perf_counter()
    # the fast rotary path stays in place for the whole loop, not only each forward: a checkpointed layer is
    # recomputed in the backward pass, and must run the same function there (else torch's CheckpointError)
    rotary_scope = fast_rotary(model)
    rotary_scope.__enter__()
    try:  # the bar is closed however the loop ends, so an error is a line of its own
        for step in range(start_step, end_step):
            # this rank's share of the step's rows, in micro-batches
            step_rows = stream.rows(step // passes * rows_per_step, rows_per_step)[dist.rank::dist.world]
            micro = [step_rows[i: i + tc.batch_size] for i in range(0, len(step_rows), tc.batch_size)]
            batches = [method.collate(chunk, tokenizer.pad_token_id, recipe.data.packing, flat) for chunk in micro]
            local_tokens = sum(len(r.input_ids) for r in step_rows)
            if method.rollout is not None:  # grpo: completions sampled and scored before the items are counted
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None):
                    batches = [method.rollout(loss_model, b, step, dist.rank, i, device) for i, b in enumerate(batches)]
                local_tokens = sum(b["tokens"] for b in batches)
            local_items = sum(method.items(b) for b in batches)
            local_samples = sum(r.sample_tokens for r in step_rows)
            global_items = all_sum(dist, [local_items])[0]

            # forward and backward, gradients accumulated (and synchronised across ranks at the last micro-batch)
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
            step_loss, tokens, sample_tokens = all_sum(dist, [step_loss, local_tokens, local_samples])

            # the optimizer step, unless the loss or the gradients went bad
            if scaler:
                scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(opt.params, tc.max_grad_norm)
            grad_norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()  # FSDP: a DTensor
            # fp16: an overflowing gradient is the scaler's to handle (it skips the step and lowers the scale)
            overflow = scaler is not None and math.isfinite(step_loss) and not math.isfinite(grad_norm)
            if not overflow:
                _stop_on_a_bad_step(step + 1, step_loss, grad_norm, progress.guard, run_dir)
            step_lr = scheduler.get_last_lr()[0]
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.last_loss = step_loss
            window[0] += step_loss * global_items
            window[1] += global_items
            window[2] += tokens
            window[3] += sample_tokens
            done = step + 1

            # validation (corpus runs), then early stopping on it
            val, stop = None, False
            if val_rows is not None and (done in ckpt_at or (tc.eval_every and done % tc.eval_every == 0)):
                t_val = time.perf_counter()
                val = method.validate(done, loss_model, val_rows, tc.batch_size, tokenizer.pad_token_id,
                                      recipe.data.packing, flat, device, autocast_dtype, dist)
                t_window += time.perf_counter() - t_val  # tokens/s and MFU count training time only
                stop = progress.stopper.update(val["val_loss"]) and done < total_steps  # at the last step: the end

            # the metrics lines
            if done % tc.log_every == 0 or done == total_steps or stop:
                now = time.perf_counter()
                tokens_per_s = window[2] / (now - t_window)
                rec = {"step": done, "epoch": round(done * rows_per_step / passes / stream.rows_per_epoch, 4),
                       "loss": window[0] / max(1, window[1]), "lr": step_lr,
                       "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
                       "mfu": mfu(flops_tok, tokens_per_s, peak_tflops, dist.world),
                       "memory_gib": _peak_memory_gib(device),
                       "elapsed_s": progress.elapsed_s + now - t_start}
                if stream.prefix:  # the samples' tokens, the shared prefix once per sample (what unshared rows feed)
                    rec["sample_tokens_per_s"] = window[3] / (now - t_window)
                if hasattr(loss_model, "take_metrics"):  # dpo's rewards and margins, grpo's rewards, KL and clipping
                    rec.update(loss_model.take_metrics())
                if dist.main:
                    _append_line(metrics_path, rec)
                    trackers.log_metrics(step_metrics(rec), done)
                postfix.update(loss=f"{rec['loss']:.4f}", tok_s=f"{tokens_per_s:.0f}")
                bar.set_postfix(postfix)
                window[:] = [0.0, 0.0, 0.0, 0.0]
                t_window = now
            if val is not None:
                if dist.main:
                    _append_line(metrics_path, val)
                    trackers.log_metrics(step_metrics(val), done)
                postfix["val"] = f"{val['val_loss']:.4f}"
                bar.set_postfix(postfix)
            bar.update(1)

            # checkpoint, and stop: early, or on a signal (after a checkpoint of this step)
            if stop:
                progress.stopped_early_at = done
            if done in ckpt_at or stop:
                save(done, step_loss, val, preemption=False)
                barrier(dist)
                if on_checkpoint is not None and dist.main:
                    t_hook = time.perf_counter()
                    on_checkpoint(checkpoint_dir(run_dir, done), {
                        "step": done, "index": sorted(ckpt_at | {done}).index(done) + 1,
                        "val_loss": val["val_loss"] if val else None,
                        "trainable_params": params_count[0], "total_params": params_count[1]})
                    spent = time.perf_counter() - t_hook  # (a sweep's evaluation): not training time
                    t_window += spent
                    t_start += spent
            if not stop and done < end_step and all_sum(dist, [float(signals.received is not None)])[0]:
                if done not in ckpt_at:
                    save(done, step_loss, val, preemption=True)
                    barrier(dist)
                signals.acknowledge()
                raise Preempted(f"{signals.received or 'a stop signal'} received: stopped after step {done} of "
                                f"{total_steps}, checkpoint {checkpoint_dir(run_dir, done).name} is written",
                                file=run_dir)
            if stop:
                break
    finally:
        bar.close()
        rotary_scope.__exit__(None, None, None)
        if trackers is not None:
            trackers.close()

    # --- the summary ---
    elapsed = progress.elapsed_s + time.perf_counter() - t_start
    summary = training_summary(recipe, run_dir, dist, progress, total_steps, elapsed, rows, flat, precision.name,
                               params_count, flops_tok, peak_tflops)
    if dist.main:
        write_summary(recipe, run_dir, summary)
    if hand_over is not None and lora and not fsdp:
        hand_over(recipe.model.path, model)
    return summary


def _stop_on_a_bad_step(done: int, step_loss: float, grad_norm: float, guard: DivergenceGuard,
                        run_dir: Path) -> None:
    """Raise before optimizer.step() when the loss or gradient norm is not finite (a NaN/inf gradient would
    poison the weights, and the next checkpoint, even while the loss still looks finite) or the divergence guard
    sees the run stop learning or run away; the error names the last checkpoint written before it went bad."""
    if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
        what = f"loss became {step_loss}" if not math.isfinite(step_loss) else f"gradient norm became {grad_norm}"
        kept = list_checkpoints(run_dir)
        raise TunelabError(f"{what} at step {done}; stopping. Last good checkpoint: "
                           f"{kept[-1] if kept else 'none'} (try a lower train.lr)", field="train.lr")
    diverged = guard.update(step_loss, grad_norm)
    if diverged:
        good = [c for c in list_checkpoints(run_dir) if step_of(c) <= done - guard.since]
        raise TunelabError(f"{diverged}; stopping at step {done}. Last good checkpoint: "
                           f"{good[-1] if good else 'none'} (try a lower train.lr; train.divergence has the "
                           "thresholds and the off switch)", field="train.lr")


def _peak_memory_gib(device) -> float:
    """The process's peak memory so far, GiB: a GPU's allocated tensors (a host counter: no sync), or the
    host's resident set on a CPU."""
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    import resource
    import sys
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2 ** 30 if sys.platform == "darwin" else 2 ** 20)


def _append_line(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
