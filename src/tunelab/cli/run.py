"""`tunelab run`, `train` and `plan`: a recipe's whole pipeline, its training alone, and its memory plan. The
flags name a recipe and its overrides; the work is `tunelab.pipeline.run` / `train_recipe` and
`tunelab.train.plan` (`estimate.plan_memory`, `advice.advise`), which a Python user calls the same way."""

from __future__ import annotations

import argparse

from tunelab.cli.arguments import add_set, flags_for, integer
from tunelab.errors import TunelabError

_FLAGS = {"overrides": "--set", "gpus": "--gpus"}


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    for verb, help_text, handler in (("run", "run a whole recipe: data → train → eval → score → report", cli_run),
                                     ("train", "train only (no evaluation)", cli_train)):
        p = verbs.add_parser(verb, help=help_text)
        p.add_argument("recipe")
        add_set(p)
        p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
        p.add_argument("--report-to", default=None, metavar="NAMES",
                       help="dashboards to log to, comma-separated: tensorboard, mlflow, wandb, swanlab, or none "
                            "(default: the recipe's report_to, itself tensorboard by default)")
        p.set_defaults(func=handler)

    p = verbs.add_parser("plan", help="will this run fit the GPU? the per-device memory of one training step, "
                                      "traced without weights or a GPU; exit 1 when it does not fit")
    p.add_argument("recipe")
    add_set(p)
    p.add_argument("--gpu-memory", default="24GiB", metavar="SIZE",
                   help="memory of one GPU: 24GiB, 24GB, 80G, 16384MiB (GB = GiB, as nvidia-smi counts; default 24GiB)")
    p.add_argument("--gpus", type=integer(1), default=1, help="GPUs the run uses (DDP: a whole replica on each)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cli_plan)


def _overrides(args: argparse.Namespace) -> list[str]:
    """--set overrides, with --report-to as the recipe key it sets (validated with the recipe)."""
    if args.report_to is None:
        return list(args.overrides)
    names = [] if args.report_to.strip() == "none" else [n.strip() for n in args.report_to.split(",") if n.strip()]
    return [*args.overrides, f"report_to=[{','.join(names)}]"]


@flags_for(_FLAGS)
def cli_run(args: argparse.Namespace) -> int:
    from tunelab.pipeline import run
    from tunelab.pipeline.kinds import summary_lines
    from tunelab.recipe import load_recipe
    from tunelab.pipeline.chain import run_chain
    recipe = load_recipe(args.recipe, _overrides(args))
    metrics = run_chain(recipe, resume=args.resume) if recipe.stages else run(recipe, resume=args.resume)
    if not metrics:
        return 0
    print("\n".join(summary_lines(metrics)))
    print(f"report: {recipe.run_dir / 'report.md'}")
    return 0


@flags_for(_FLAGS)
def cli_train(args: argparse.Namespace) -> int:
    import os

    from tunelab.pipeline import train_recipe
    from tunelab.recipe import load_recipe
    recipe = load_recipe(args.recipe, _overrides(args))
    if recipe.stages:
        raise TunelabError("a recipe with stages continues each stage from the best checkpoint of the one before, "
                           "which its evaluation chooses: tunelab run it", file=args.recipe, field="stages")
    summary = train_recipe(recipe, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"trained {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
          f"{summary['train_seconds']:.0f}s; checkpoints in {recipe.run_dir / 'checkpoints'}")
    return 0


@flags_for(_FLAGS)
def cli_plan(args: argparse.Namespace) -> int:
    """`tunelab plan`: 0 when the run fits the card, 1 when it does not (with the changes that would fit)."""
    import json

    from tunelab.recipe import load_recipe
    from tunelab.train.plan.advice import advise
    from tunelab.train.plan.estimate import plan_memory
    from tunelab.train.plan.report import format_plan, plan_to_json
    from tunelab.train.plan.sizes import parse_memory_size
    card = parse_memory_size(args.gpu_memory, field="--gpu-memory")
    recipe = load_recipe(args.recipe, args.overrides, check_data=False)  # the plan reads no data
    plan = plan_memory(recipe, card, args.gpus, recipe_file=args.recipe)
    if not plan.fits:
        plan.advice = advise(recipe, plan)
    print(json.dumps(plan_to_json(plan), indent=2) if args.json else format_plan(plan))
    return 0 if plan.fits else 1
