"""`tunelab sweep`: a hyperparameter search over a recipe for the competition score under the retention
constraint. The flags fill `tunelab.sweep.SweepSettings`; the search is `tunelab.sweep.sweep`."""

from __future__ import annotations

import argparse

from tunelab.cli.arguments import add_set, count, flags_for, integer

_FLAGS = {"overrides": "--set", "objective": "--objective", "storage": "--storage", "out": "--out",
          "trials": "--trials", "devices": "--devices"}


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("sweep", help="search recipe settings (Optuna TPE) for the best score whose retention "
                                       "passes; resumable, extendable, shared by several workers")
    p.add_argument("recipe")
    p.add_argument("--space", required=True, metavar="SPACE.yaml",
                   help="the fields searched: `train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}`, "
                        "`lora.rank: [4, 8, 16]`, any dotted recipe field (docs/sweep.md)")
    p.add_argument("--trials", type=integer(1), required=True,
                   help="the sweep's total number of trials: run again with the same number to resume a stopped "
                        "sweep, with a larger one to extend a finished one")
    add_set(p)
    p.add_argument("--objective", default="score",
                   help="score (the best checkpoint's competition score, default), <task>/<metric> at the best "
                        "checkpoint (e.g. arithmetic/accuracy), or val_loss (pretraining)")
    p.add_argument("--direction", choices=["maximize", "minimize"], default=None,
                   help="default: what the objective measures (minimize val_loss and lower-is-better metrics)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="the sweep directory: trial runs, study.db, results (default <output_dir>/<name>-sweep)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="the Optuna study storage, e.g. postgresql://user@host/db to share one sweep between "
                        "machines (default: sqlite in the sweep directory)")
    p.add_argument("--study", default=None, metavar="NAME", help="the study's name in the storage (default: the "
                                                                  "recipe's name)")
    p.add_argument("--devices", default=None, metavar="0,1,..",
                   help="GPUs of this machine, one worker process (one trial at a time) on each")
    p.add_argument("--workers", type=count(1), default=1,
                   help="worker processes on the recipe's device, the CPU cores split between them (default 1)")
    p.add_argument("--no-prune", dest="prune", action="store_false",
                   help="never stop a trial early (by default a trial behind the median of the others at the "
                        "same checkpoint is pruned; judging it evaluates each checkpoint as it is written)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="do not run the recipe's own values as the first trial")
    p.set_defaults(func=cli_sweep)


@flags_for(_FLAGS)
def cli_sweep(args: argparse.Namespace) -> int:
    from tunelab.errors import TunelabError
    from tunelab.sweep import SweepSettings, sweep
    from tunelab.sweep.results import format_results
    devices = [d.strip() for d in args.devices.split(",")] if args.devices else []
    if args.devices is not None and (not devices or not all(d.isdigit() for d in devices)):
        raise TunelabError(f"expects GPU indices such as 0,1,2,3, got {args.devices!r}", field="devices")
    results = sweep(SweepSettings(
        recipe=args.recipe, space=args.space, trials=args.trials, overrides=list(args.overrides),
        objective=args.objective, direction=args.direction, out=args.out, storage=args.storage, study=args.study,
        prune=args.prune, baseline=args.baseline, devices=devices, workers=args.workers))
    print(format_results(results))
    best, base = results.best, results.baseline
    if best is None:
        print("no trial has finished with its retention passing yet")
    else:
        line = f"best: trial {best.number} ({best.user_attrs.get('run')}) {best.value:.6g}"
        if base is not None and base.value is not None:
            line += (f"; the recipe's own values (trial {base.number}): {base.value:.6g}, "
                     f"{best.value - base.value:+.6g}")
        print(line)
    for path in results.files:
        print(f"wrote {path}")
    return 0
