"""tunelab: a workbench for fine-tuning, evaluating and serving LLMs (data → model → train → eval → score).

Every verb's work is a function a Python user can call as the CLI does — `tunelab.run(tunelab.load_recipe(path))`,
`tunelab.evaluate(...)`, `tunelab.predict(...)`, `tunelab.prepare_corpus(...)`, `tunelab.export(...)` — exported
here lazily: `import tunelab` loads nothing more, and a name imports its stage only when it is first used.
(`tunelab train`'s function is `train_recipe`: `tunelab.train` is the training package.)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["convert_checkpoint", "evaluate", "export", "load_recipe", "predict", "prepare_corpus", "run",
           "synthesize_qa", "train_recipe", "verify_corpus"]


def __getattr__(name: str) -> Any:
    match name:
        case "load_recipe":
            from tunelab.recipe import load_recipe as found
        case "run":
            from tunelab.pipeline import run as found
        case "train_recipe":
            from tunelab.pipeline import train_recipe as found
        case "evaluate":
            from tunelab.eval.evaluate import evaluate as found
        case "predict":
            from tunelab.eval.predict import predict as found
        case "prepare_corpus":
            from tunelab.data.corpus.prepare import prepare_corpus as found
        case "verify_corpus":
            from tunelab.data.corpus.verify import verify_corpus as found
        case "export":
            from tunelab.convert.export import export as found
        case "convert_checkpoint":
            from tunelab.convert.mindformers import convert_checkpoint as found
        case "synthesize_qa":
            from tunelab.synth.qa import synthesize_qa as found
        case _:
            raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
    return found
