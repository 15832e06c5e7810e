"""The `base_agreement` task: would the tuned model still say what its base said?

The base's own greedy answers to general prompts (`tunelab.eval.base_answers`: generated once, cached by the base's
weights and settings) are scored under each model by log-likelihood — one forward pass a prompt, no generation, so
it is cheap enough for every checkpoint. A fine-tuning that collapsed the model's style into its task's short
answers ("Write a haiku about autumn." → one word) gives the base's longer answers a far lower likelihood, with no
judge model to ask.

Metrics (0-100, higher is closer to the base):

* `agreement`: the geometric mean of the per-token probability of the base's answers, 100·exp(Σ log p / Σ tokens),
  pooled over every answer token (and the end of turn where the base ended its answer). The base itself scores
  its own answers' typical confidence; retention is the tuned model's agreement as a fraction of that.
* `greedy_answers`: the share of answers the model would write token for token (every token its argmax).
* `mean_logprob`: Σ log p / Σ tokens, the same pooled log-likelihood in nats a token.

Which base: the task's `base` setting (a model directory), else the evaluated model's own base (an adapter's
`base_model_name_or_path`), else the model itself; a run sets it to the recipe's base. The prompts: the list tunelab
ships (`data/general_prompts.jsonl`, its `eval` split, English and Chinese; its `train` split is what `data.replay:
self` replays, so the two never overlap), or the user's own through an eval entry's `source:` (JSONL lines with a
`prompt`, or any format tunelab reads: its instruction is the prompt, its answer is ignored).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.tasks.registry import Task, register_task

PROMPTS_FILE = Path(__file__).parent / "data" / "general_prompts.jsonl"
SPLITS = ("eval", "train")


def general_prompts(split: str, language: str | None = None) -> list[Example]:
    """The shipped general prompts of one split (`eval`: base_agreement's, `train`: self-replay's)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    out = []
    for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec["split"] == split and (language is None or rec["language"] == language):
                out.append(Example(id=rec["id"], instruction=rec["prompt"], output="", kind=rec["language"]))
    return out


def read_prompts(path: str | Path) -> list[Example]:
    """A user's prompts: JSONL with `prompt` (and optional `id`), or any format `read_examples` reads."""
    from tunelab.data.formats import prompt_language, read_examples
    from tunelab.records import iter_records, require_str
    records = list(iter_records(path))
    if records and "prompt" in records[0][1]:
        out = []
        for line, rec in records:
            text = require_str(rec, "prompt", path, line)
            if not text.strip():
                raise TunelabError("an empty prompt", file=path, line=line, field="prompt")
            out.append(Example(id=str(rec.get("id", f"{Path(path).stem}-{line}")), instruction=text, output="",
                               kind=prompt_language(text)))
        return out
    return [Example(id=ex.id, instruction=ex.instruction, input=ex.input, output="",
                    kind=prompt_language(ex.instruction)) for ex in read_examples(path)]


@register_task
class BaseAgreementTask(Task):
    name = "base_agreement"
    primary_metric = "agreement"
    ability = True
    modes = ("loglik",)
    retention_metrics = {"agreement": 1.0}
    settings = ("base", "max_answer_tokens")
    counts = ("max_answer_tokens",)
    answers_from_base = True  # the runner fills each example's answer with the base's own (eval.base_answers)
    base: str | None = None
    max_answer_tokens: int = 128

    def default_examples(self) -> list[Example]:
        return general_prompts("eval")

    def load_examples(self, path: str | Path) -> list[Example]:
        return read_prompts(path)

    def loglik_requests(self, example: Example, prompt: str) -> list[tuple[str, str]]:
        if "continuation" not in example.meta:
            raise RuntimeError("base_agreement scores the base's answers: fill them first "
                               "(tunelab.eval.base_answers.base_answers)")
        return [(prompt, example.meta["continuation"])]

    def grade_loglik(self, results: list, example: Example) -> dict[str, Any]:
        r = results[0]
        return {"correct": r.is_greedy, "logprob": r.logprob, "tokens": r.tokens, "kind": example.kind}

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        def agg(items):
            tokens = sum(g["tokens"] for g in items)
            mean = sum(g["logprob"] for g in items) / max(1, tokens)
            return {"n": len(items), "tokens": tokens, "agreement": 100 * math.exp(mean), "mean_logprob": mean,
                    "greedy_answers": 100 * sum(g["correct"] for g in items) / max(1, len(items))}
        out = agg(graded)
        kinds = sorted({g["kind"] for g in graded if g.get("kind")})
        if len(kinds) > 1:
            out["by_language"] = {k: agg([g for g in graded if g.get("kind") == k]) for k in kinds}
        return out
