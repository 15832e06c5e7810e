"""The training loop: LoRA or full fine-tuning over packed rows, or pretraining on a corpus, readable top
to bottom: setup -> maybe restore -> for each step: batches, forward and backward, optimizer step, metrics,
validation, checkpoint, stop checks -> summary.

`_train` reads as that sequence: `_set_up`, `_restore`, then each step — `train_step` (batches, forward and
backward, optimizer step), `_validate`, `MetricsLog.log`, `_checkpoint`, `_stop_on_a_signal` — then `_finish`.
The pieces live beside it, each in a file named for what it holds: what the run is built from, in the order
that fixes its random draws (`setup.py`, whose `TrainingRun` holds them for the loop), one optimizer step
(`step.py`), the metrics lines, dashboards, progress bar and training clock (`metrics_log.py`), what a
checkpoint's trainer state holds, saved and restored in one place (`trainer_state.py`), the files of a
checkpoint (`checkpoints.py`), the processes (`distributed.py`), and the summary (`summary.py`).

One command runs on a CPU, one GPU, or several processes under `torchrun` / `accelerate launch`
(DDP, gloo on CPU): each rank takes a strided share of every step's rows. The loss projects only labelled
positions onto the vocabulary (`methods/sft_loss.py`); on CPU, LoRA dropout (`dropout.py`) and packed-row attention
(`model/kernels/attention.py`) use cheaper kernels that compute the same thing.

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
import os
import random
import shutil
import time
from dataclasses import replace

from tunelab.data.sources import training_examples
from tunelab.data.templates import recipe_template
from tunelab.errors import Preempted, TunelabError
from tunelab.decoding.generation_config import eval_max_new_tokens
from tunelab.model.kernels.rotary import fast_rotary
from tunelab.recipe import Recipe
from tunelab.records import read_json_object
from tunelab.runs import checkpoint_dir, read_metrics
from tunelab.train import sharding
from tunelab.train.checkpoints import checkpoint_steps, save_checkpoint, staging_dir
from tunelab.train.methods import METHODS
from tunelab.train.methods.base import KeepsWindow
from tunelab.train.distributed import Dist, all_sum, barrier, data_parallel, init_distributed
from tunelab.train.divergence import DivergenceGuard
from tunelab.train.metrics_log import Clock, MetricsLog
from tunelab.train.run_dir import prepare_run_dir
from tunelab.train.run_lock import run_lock
from tunelab.train.setup import (TrainingRows, TrainingRun, build_model_and_tokenizer, build_optimization,
                                 check_memory, choose_precision, continued_adapter, count_steps, few_pairs,
                                 trainable_model, trainable_token_ids, training_rows)
from tunelab.train.step import Prefetch, read_steps, train_step
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

    `rewards` (a `tunelab.eval.rewards.Rewards`) scores a `grpo` or `rft` run's completions; the pipeline builds it
    from `train.grpo.rewards` / `train.rft.rewards` (train/ does not import the tasks whose graders it calls).

    While it trains, `ONEDNN_PRIMITIVE_CACHE_CAPACITY` is 64 unless the caller set it (`onednn_primitive_cache`),
    and as it was again when it returns."""
    from tunelab.model.loading import quiet_transformers
    quiet_transformers()
    dist = init_distributed(recipe.train.device)
    with onednn_primitive_cache(ONEDNN_CACHE_KERNELS), contextlib.ExitStack() as held:
        refused = None
        if dist.main:
            try:
                held.enter_context(run_lock(recipe.run_dir))
            except TunelabError as e:
                refused = e
        if all_sum(dist, [1.0 if refused else 0.0])[0]:  # every rank stops, not rank 0 alone
            raise refused or TunelabError("another process is writing this run (rank 0 names it)",
                                          file=recipe.run_dir)
        with StopSignals() as signals:
            return _train(recipe, resume, dist, signals, held, hand_over, on_checkpoint, rewards)


# oneDNN (bf16 matmuls on CPU) keeps a compiled kernel for every shape it meets, up to 1,024 of them; the row width
# and the count of labelled positions change shape every step, so memory grew ~5 MB a step (0.4 -> 1.2 GB in 120
# steps of a 0.2 M-parameter model). 64 holds what one step reuses.
ONEDNN_CACHE_KERNELS = 64


@contextlib.contextmanager
def onednn_primitive_cache(kernels: int):
    """`ONEDNN_PRIMITIVE_CACHE_CAPACITY` set to `kernels` while the block runs, unless the caller set it already (the
    caller's value wins), and as it was after. torch offers no call for it: oneDNN reads the variable once, at the
    process's first bf16 matmul on a CPU, so a run that makes that first matmul keeps the limit for the rest of the
    process whatever the variable says afterwards."""
    name = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
    if name in os.environ:
        yield
        return
    os.environ[name] = str(kernels)
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _train(recipe: Recipe, resume: bool, dist: Dist, signals: StopSignals, held: contextlib.ExitStack,
           hand_over=None, on_checkpoint=None, rewards=None) -> dict:
    """`train` inside the run lock and the stop signals: set up, maybe restore, the steps, the summary. `held`
    closes what the run holds (the lock, a vLLM server for rollouts) however it ends."""
    run = _set_up(recipe, resume, dist, rewards, held)
    progress = _restore(run, resume)
    train_model = data_parallel(run.trained.loss_model, dist, run.trained.fsdp)
    train_model.train()
    finished = run.run_dir / "train_summary.json"
    start_step, end_step = progress.step, progress.stopped_early_at or run.total_steps
    if start_step >= end_step and finished.exists():  # resuming a finished run: nothing left to train
        return read_json_object(finished)

    # --- the steps ---
    metrics = MetricsLog(run, progress, start_step, resume_step=start_step if resume else None)
    prefetch = Prefetch()  # this run's: the next step's batches collated while a step runs, closed with the loop
    try:  # the bar is closed however the loop ends, so an error is a line of its own
        # the fast rotary path stays in place for the whole loop, not only each forward: a checkpointed layer is
        # recomputed in the backward pass, and must run the same function there (else torch's CheckpointError)
        with fast_rotary(run.trained.model):
            for step in range(start_step, end_step):
                train_step(run, train_model, progress, step, prefetch)  # batches, forward/backward, optimizer step
                done = step + 1
                val, stop = _validate(run, progress, metrics.clock, done)
                metrics.log(done, val, stop)  # a metrics line reads the steps' losses (a bad one stops here)
                # checkpoint, and stop: early, or on a signal (after a checkpoint of this step)
                if stop:
                    progress.stopped_early_at = done
                if done in run.ckpt_at or stop:
                    _checkpoint(run, progress, metrics.clock, done, val, on_checkpoint)
                if not stop and done < end_step:
                    _stop_on_a_signal(run, progress, metrics.clock, signals, done, val)
                if stop:
                    break
    finally:
        prefetch.close()
        metrics.close()

    # --- the summary ---
    return _finish(run, progress, metrics.clock, hand_over)


def _set_up(recipe: Recipe, resume: bool, dist: Dist, rewards, held: contextlib.ExitStack) -> TrainingRun:
    """Everything the steps need, in an order that fixes the random draws (`setup.py`)."""
    import torch
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
    precision = choose_precision(recipe, dist)
    if tc.memory_check:
        check_memory(recipe, dist)
    template = recipe_template(recipe.data)
    method = METHODS[tc.method]
    examples = [] if recipe.data.corpus or tc.method == "dpo" else training_examples(recipe)
    model, tokenizer = build_model_and_tokenizer(recipe, examples, template, run_dir, dist)
    template = template.resolve(tokenizer, recipe.model.path)  # `auto`: the base's own template when it has one
    rows = training_rows(recipe, examples, model, tokenizer, template, dist)
    token_ids = (trainable_token_ids(recipe, model, tokenizer, rows.answer_counts, dist, rows.encoded)
                 if recipe.lora.enabled and not continued_adapter(recipe) else [])  # a continued adapter has its own
    trained = trainable_model(recipe, model, precision, dist, token_ids, tokenizer, rewards)
    from tunelab.train.methods.own_samples import SamplingLossModel
    if isinstance(trained.loss_model, SamplingLossModel):  # who draws the answers: the model, or vLLM (`engine:`)
        from tunelab.train.methods.samplers import vllm_policy
        trained.loss_model.sampler = vllm_policy(recipe, trained.model, dist, precision, held) or \
            trained.loss_model.sampler
    if tc.method == "grpo":
        if tc.grpo.filter_prompts:  # before the steps are counted: they go to the prompts kept
            from tunelab.train.methods.grpo import filter_prompts
            from tunelab.train.row_stream import ShuffledRows
            kept = filter_prompts(run_dir, rows.stream.items, trained.loss_model, tc.batch_size, dist.main)
            rows = replace(rows, stream=ShuffledRows(kept, recipe.seed), samples=len(kept))
        trained.loss_model.reserve = rows.stream.items  # `zero_variance: refill` draws fresh prompts from these
    from tunelab.model.lora import count_parameters
    params_count = count_parameters(trained.model)
    from tunelab.train.mfu import flops_per_token, measure_peak_tflops
    flops_tok = flops_per_token(trained.model, recipe.data.max_seq_len)
    peak_tflops = tc.peak_tflops or measure_peak_tflops(dist.device, precision.name)

    point = resume_point(run_dir, dist) if resume else None
    rows_per_step = global_batch(tc.batch_size, tc.grad_accum, dist.world, point)
    passes = method.passes(recipe)  # optimizer steps per step's rows: grpo's num_iterations, else 1
    total_steps, untrained = count_steps(tc, rows.stream.rows_per_epoch, rows_per_step, passes)
    ckpt_at = set(checkpoint_steps(total_steps, tc.num_checkpoints))
    if dist.main:
        _say_what_is_trained(recipe, rows, trained.flat, rows_per_step, untrained, total_steps)
    opt = build_optimization(tc, trained.model, total_steps, precision, dist.device)
    return TrainingRun(recipe=recipe, dist=dist, run_dir=run_dir, precision=precision, template=template,
                       method=method, tokenizer=tokenizer, rows=rows, trained=trained, params_count=params_count,
                       flops_tok=flops_tok, peak_tflops=peak_tflops, point=point, rows_per_step=rows_per_step,
                       passes=passes, total_steps=total_steps, ckpt_at=ckpt_at, opt=opt)


def _few_pairs(recipe: Recipe, rows: TrainingRows, total_steps: int, rows_per_step: int) -> str | None:
    """A preference run's warning when its pairs make too few steps (`setup.few_pairs`); None otherwise."""
    return few_pairs(rows.samples, total_steps, rows_per_step) if recipe.train.method == "dpo" else None


def _say_what_is_trained(recipe: Recipe, rows: TrainingRows, flat: bool, rows_per_step: int, untrained: int,
                         total_steps: int) -> None:
    """A corpus run's blocks and padding; a preference run with too few pairs; and the rows no step trains on,
    when a last step cannot be filled."""
    stream, val_rows, tc = rows.stream, rows.val_rows, recipe.train
    if recipe.data.corpus:
        log.info(f"corpus: {stream.count:,} training blocks in {stream.rows_per_epoch:,} rows of up to "
                 f"{recipe.data.max_seq_len} tokens per epoch ({stream.padding_pct:.1f}% padding, "
                 f"{'packed' if recipe.data.packing else 'one block a row'}"
                 f"{', laid end to end: no padding computed' if flat else ''}); validation on "
                 f"{val_rows.count if val_rows else 0:,} blocks")
    few = _few_pairs(recipe, rows, total_steps, rows_per_step)
    if few:
        log.warning(f"warning: {few}")
    if untrained:  # the last partial step is dropped: say so, the step count stays
        log.info(f"note: rows not trained on: {untrained:,} of the {int(tc.epochs * stream.rows_per_epoch):,} of "
              f"{tc.epochs:g} epoch{'' if tc.epochs == 1 else 's'}, too few to fill a last step of {rows_per_step} "
              "rows; train.batch_size and train.grad_accum (and the number of processes) change how many")


def _restore(run: TrainingRun, resume: bool) -> Progress:
    """The loop's counters: fresh, or a resumed run's taken back with the weights, optimizer, schedule and random
    state from its checkpoint (`trainer_state.py`); metrics.jsonl emptied, or cut back to the checkpoint."""
    tc, dist, trained, opt = run.recipe.train, run.dist, run.trained, run.opt
    progress = Progress(EarlyStopping(tc.early_stopping_patience, tc.early_stopping_min_delta),
                        DivergenceGuard(**tc.divergence.model_dump()))
    metrics_path = run.metrics_path
    if resume:
        point = run.point
        if point is not None:
            note = restore(point, trained.loss_model, opt.optimizer, opt.scheduler, opt.scaler, dist, trained.fsdp)
            if note and dist.main:
                log.info(f"note: {note}")
            progress.resumed(point)
            if isinstance(trained.loss_model, KeepsWindow):
                trained.loss_model.set_window(rank_window(point.trainer_state, dist.rank))
        if dist.main:  # drop log lines past the checkpoint; they are recomputed
            logged = read_metrics(metrics_path)
            progress.count_lost(logged)
            kept = [r for r in logged if r["step"] <= progress.step]
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    elif dist.main:
        metrics_path.write_text("", encoding="utf-8")
    return progress


def _validate(run: TrainingRun, progress: Progress, clock: Clock, done: int) -> tuple[dict | None, bool]:
    """The validation line of step `done` when it is due (every `eval_every` steps and at every checkpoint, when
    the run has validation rows), and whether early stopping ends the run there."""
    tc, val_rows = run.recipe.train, run.rows.val_rows
    if val_rows is None or not (done in run.ckpt_at or (tc.eval_every and done % tc.eval_every == 0)):
        return None, False
    t_val = time.perf_counter()
    val = run.method.validate(step=done, loss_model=run.trained.loss_model, rows=val_rows, batch_size=tc.batch_size,
                              pad_id=run.tokenizer.pad_token_id, packed=run.recipe.data.packing, flat=run.trained.flat,
                              device=run.dist.device, autocast_dtype=run.trained.autocast_dtype, dist=run.dist)
    clock.pause_window(time.perf_counter() - t_val)  # tokens/s and MFU count training time only
    return val, progress.stopper.update(val["val_loss"]) and done < run.total_steps  # at the last step: the end


def _checkpoint(run: TrainingRun, progress: Progress, clock: Clock, done: int, val: dict | None,
                on_checkpoint) -> None:
    """An evenly spaced checkpoint (or the early stop's), then the caller's `on_checkpoint` hook."""
    _save(run, progress, clock, done, val, preemption=False)
    barrier(run.dist)
    if on_checkpoint is not None and run.dist.main:
        t_hook = time.perf_counter()
        on_checkpoint(checkpoint_dir(run.run_dir, done), {
            "step": done, "index": sorted(run.ckpt_at | {done}).index(done) + 1,
            "val_loss": val["val_loss"] if val else None,
            "trainable_params": run.params_count[0], "total_params": run.params_count[1]})
        clock.pause(time.perf_counter() - t_hook)  # (a sweep's evaluation): not training time


def _stop_on_a_signal(run: TrainingRun, progress: Progress, clock: Clock, signals: StopSignals, done: int,
                      val: dict | None) -> None:
    """When any rank received SIGTERM/SIGUSR1: a checkpoint of step `done` (unless one was just written), then
    `Preempted`."""
    dist = run.dist
    if not all_sum(dist, [float(signals.received is not None)])[0]:
        return
    if done not in run.ckpt_at:
        _save(run, progress, clock, done, val, preemption=True)
        barrier(dist)
    signals.acknowledge()
    raise Preempted(f"{signals.received or 'a stop signal'} received: stopped after step {done} of "
                    f"{run.total_steps}, checkpoint {checkpoint_dir(run.run_dir, done).name} is written",
                    file=run.run_dir)


def _save(run: TrainingRun, progress: Progress, clock: Clock, done: int, val: dict | None, preemption: bool) -> None:
    """The checkpoint of step `done`: weights, trainer state and files (every rank takes part), after its steps
    were read (a bad one stops the run before its weights are written)."""
    read_steps(run, progress)
    dist, trained, opt, run_dir = run.dist, run.trained, run.opt, run.run_dir
    loss_model, model = trained.loss_model, trained.model
    rng = gather_rng(dist)  # every rank's: each draws its own dropout masks
    # every rank's loss module window too: its sums, and a grpo generation batch still to be trained on
    windows = gather_objects(dist, loss_model.window()) if isinstance(loss_model, KeepsWindow) else None
    weights = None
    if trained.fsdp:  # collectives: the shards into the staging directory, the whole weights to rank 0's host
        staging = staging_dir(run_dir, done)
        if dist.main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        barrier(dist)
        sharding.save_sharded(staging, loss_model, opt.optimizer)
        weights = sharding.full_trainable_state(model) if trained.lora else sharding.full_model_state(loss_model)
    if not dist.main:
        return
    trainer_state = capture(model, opt.optimizer, opt.scheduler, opt.scaler, rng, progress, run.rows_per_step, done,
                            clock.elapsed(), sharded=trained.fsdp, loss_window=windows)
    state = {"step": done, "loss": progress.last.loss, "total_steps": run.total_steps,
             "val_loss": val["val_loss"] if val else None}
    if preemption:
        state["preemption"] = True
    tc = run.recipe.train
    save_checkpoint(run_dir, done, model, run.tokenizer, run.template, trainer_state, state, lora=trained.lora,
                    save_merged=tc.save_merged, max_new_tokens=eval_max_new_tokens(run.recipe.eval),
                    weights=weights, staged=trained.fsdp)


def _finish(run: TrainingRun, progress: Progress, clock: Clock, hand_over) -> dict:
    """train_summary.json, and a LoRA run's model handed over to evaluation."""
    read_steps(run, progress)  # the last loss (a run that ended on a metrics line has none left unread)
    summary = training_summary(run.recipe, run.run_dir, run.dist, progress, run.total_steps, clock.elapsed(),
                               run.rows, run.trained.flat, run.precision.name, run.params_count, run.flops_tok,
                               run.peak_tflops)
    few = _few_pairs(run.recipe, run.rows, run.total_steps, run.rows_per_step)
    if few:
        summary["warnings"] = [few]
    if run.dist.main:
        write_summary(run.recipe, run.run_dir, summary)
    if hand_over is not None and run.trained.lora and not run.trained.fsdp:
        hand_over(run.recipe.model.path, run.trained.model)
    return summary
