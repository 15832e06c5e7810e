"""tunelab's import graph, read from the source files: no cycles, and no stage imports a stage above it.

Every `import` and `from … import` of a tunelab module counts, at the top of a file or inside a function
(a lazy import is still a dependency: it only moves the moment it is paid). An edge goes to the module the
statement loads: `from tunelab.tasks import reading` loads the submodule `tunelab.tasks.reading`,
`from tunelab.tasks import get_task` the package `tunelab.tasks` (the CLI's verb handlers import what they
call inside the handler: those are edges like any other). The parent packages Python initialises on
the way (`tunelab`, `tunelab.tasks` for `tunelab.tasks.registry`) are not edges: a package whose
`__init__` imports its own modules (the task catalogue) would otherwise be a cycle with each of them.

The stages, lowest first. A module may import modules of its own stage and of stages with a lower rank;
stages of equal rank are siblings that do not import each other. Every module must be placed (a new file
gets a stage on purpose), by the longest entry that names it: `name` is that module alone, `name.*` the
module or package and everything under it.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = [
    # stage, rank, modules, what it holds (docs/architecture.md's drawing and table are made from this table)
    ("foundation", 0, ["tunelab.errors", "tunelab.recipe.*", "tunelab.records", "tunelab.runs",
                        "tunelab.checkpoint_manifest", "tunelab.run_format"],
     "the one project error type (file / line / field); the recipe schema, also `tunelab eval`'s configuration; "
     "reading and writing record files; a run directory's layout, which checkpoints are whole (their manifests) "
     "and which one is best and its results (train, eval, serve and export share it); the one metrics.jsonl reader "
     "and a retention entry's verdict; the version of a run's files and the one migration of older ones; the "
     "`engine:` section (embedded or vLLM)"),
    ("data", 1, ["tunelab.data.*"], "formats, generators, templates and the chat renderer, packing, corpora: no model"),
    ("track", 1, ["tunelab.track.*"], "the dashboards a run logs to (TensorBoard, MLflow, W&B, SwanLab)"),
    ("model", 2, ["tunelab.model.*"],
     "loading and placement: paths, hub, presets, device and precision, LoRA, quantisation, tokenizers, untrained "
     "tokens, the one eval-mode context and the one reference switch; `kernels/`: what training and decoding both run — the CPU attention for packed rows, rotary without "
     "copies, the one target-token log-probability (and KL) kernel"),
    ("decoding", 3, ["tunelab.decoding.*"],
     "the one place tokens are generated or scored, behind one engine interface: the embedded engine (stop tokens, "
     "sampling, the KV cache, prefix-tree prefill) and vLLM's server (started, or at a URL); "
     "the generation config a checkpoint was scored with; the one OpenAI-compatible client (`openai_client`: one "
     "retry policy, one error naming the URL) that the judge, synth and the UI's remote models share"),
    ("scoring", 3, ["tunelab.scoring"], "low-parameter ratio (model shapes) and the competition formulas"),
    ("convert", 4, ["tunelab.convert.*"],
     "other ecosystems: MindSpore `.ckpt` and MindFormers, GGUF in and out, Ollama's Modelfile, merged HF export; "
     "the one resolver from a named model (run, checkpoint, adapter, GGUF, .ckpt, hub id) to base + adapter"),
    ("metrics", 4, ["tunelab.metrics.*"],
     "measuring instruments that know no task: QA F1/EM, Rouge-L, log-likelihood, perplexity, pass@k, a "
     "paired accuracy change's interval and McNemar's p, prediction files"),
    ("train", 5, ["tunelab.train.*"],
     "setup, the step loop, checkpoints and resume, the run lock, DDP / FSDP, the memory plan; `methods/`: sft, "
     "dpo, grpo and rft, each owning its rows, loss and metrics"),
    ("tasks", 5, ["tunelab.tasks.*"], "examples + prompt + answer extraction + metric, registered by name"),
    ("eval", 6, ["tunelab.eval.*", "tunelab.compare"],
     "the eval configuration (sets), the runner, retention, where a pass gets its models (resident: one base held "
     "on a GPU; vLLM's server, adapters by name), `tunelab eval` / `predict`, GRPO's rewards from the "
     "tasks' graders (above tasks, so train gets rewards as numbers and never imports a grader); `tunelab runs "
     "table` (what runs measured, read back: the CLI, a sweep and the UI's Runs tab show the same table)"),
    ("serve", 7, ["tunelab.serve.*"], "the OpenAI-compatible server (its engine embedded or vLLM), the web UI, the "
     "arena, `tunelab generate`"),
    ("synth", 7, ["tunelab.synth.*"], "training data from any OpenAI-compatible endpoint: a client"),
    ("top", 8, ["tunelab", "tunelab.cli.*", "tunelab.pipeline.*", "tunelab.report", "tunelab.data_check",
                "tunelab.handin", "tunelab.sweep.*", "tunelab.judge.*"],
     "verbs that orchestrate several stages: every verb's function exported lazily for Python users, the command "
     "line (one module per verb group), `tunelab run` and its run kinds, what every run report shares, `tunelab "
     "data check`, `tunelab handin` (export + the run's metrics), `tunelab sweep`, `tunelab judge`"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "tunelab").rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The tunelab modules `path` (module `name`) loads, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m == "tunelab" or m.startswith("tunelab.")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) - {name} for name, path in mods.items()}


def stage_of(module: str) -> tuple[str, int]:
    best = None
    for stage, rank, entries, _ in LAYERS:
        for entry in entries:
            base = entry.removesuffix(".*")
            hit = module == base or (entry.endswith(".*") and module.startswith(base + "."))
            if hit and (best is None or len(base) > best[0]):
                best = (len(base), stage, rank)
    assert best is not None, f"{module} has no stage: place it in LAYERS"
    return best[1], best[2]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_import_names_a_module_that_exists():
    edges = graph()
    missing = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if b not in edges)
    assert not missing, missing


def test_every_verb_handler_is_a_function_of_the_cli():
    """Every verb, sub-verb included, runs a function of a `tunelab.cli` module: the CLI is the front door, and
    no handler lives in (or is named by a string into) a library module."""
    from tunelab.cli import build_parser

    def handlers(parser: argparse.ArgumentParser, path: list[str]):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield " ".join(path), parser.get_default("func")
        for action in subs:
            for name, sub in action.choices.items():
                yield from handlers(sub, [*path, name])

    found = list(handlers(build_parser(), []))
    assert len(found) >= 25
    for verb, func in found:
        assert callable(func) and type(func).__name__ == "function", verb
        assert func.__module__.startswith("tunelab.cli.") and func.__module__ in modules(), (verb, func.__module__)


def test_no_import_cycles():
    assert cycles(graph()) == []


def package_of(module: str) -> str:
    """The top-level part of tunelab a module belongs to: `tunelab.eval.runner` -> `tunelab.eval`, a module
    at the top (`tunelab.recipe`) is its own."""
    return ".".join(module.split(".")[:2])


def test_no_package_import_cycles():
    """Packages, not only modules, import one way: `tasks` may use `metrics` and `eval` may use `tasks`, but
    nothing in `tasks` imports `eval` (a cycle between two packages is one room split by a curtain)."""
    edges: dict[str, set[str]] = {}
    for a, targets in graph().items():
        edges.setdefault(package_of(a), set()).update(package_of(b) for b in targets if package_of(b) != package_of(a))
    assert cycles(edges) == []


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Every import of a module of a higher stage, or of a sibling stage (same rank)."""
    bad = []
    for a, targets in sorted(edges.items()):
        stage_a, rank_a = stage_of(a)
        for b in sorted(targets):
            stage_b, rank_b = stage_of(b)
            if stage_b != stage_a and rank_b >= rank_a:
                bad.append(f"{a} ({stage_a}) imports {b} ({stage_b})")
    return bad


def test_no_stage_imports_a_stage_above_it():
    bad = upward(graph())
    assert not bad, "\n".join(bad)


def test_the_checker_sees_what_it_must():
    """The walker finds lazy (a verb handler's), and `from package import module` imports; the cycle finder finds
    a cycle; an upward and a sibling import are caught; every stage holds some module."""
    tree = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(tree) == [["a", "b", "c"]]
    assert upward({"tunelab.data.glue": {"tunelab.train.loop"}, "tunelab.train.loop": {"tunelab.tasks.glue"},
                   "tunelab.eval.sets": {"tunelab.tasks.glue", "tunelab.records"}}) == [
        "tunelab.data.glue (data) imports tunelab.train.loop (train)",
        "tunelab.train.loop (train) imports tunelab.tasks.glue (tasks)"]
    mods = modules()
    assert "tunelab.tasks.reading" in imports_of("tunelab.tasks", mods["tunelab.tasks"], set(mods))
    runner = imports_of("tunelab.eval.runner", mods["tunelab.eval.runner"], set(mods))
    assert "tunelab.model.loading" in runner  # imported inside evaluate_model_dir
    assert "tunelab.eval.evaluate" in imports_of("tunelab.cli.eval", mods["tunelab.cli.eval"], set(mods))
    assert stage_of("tunelab.records") == ("foundation", 0) and stage_of("tunelab.data.glue") == ("data", 1)
    assert stage_of("tunelab.metrics.rouge") == ("metrics", 4) and stage_of("tunelab.eval.sets") == ("eval", 6)
    assert package_of("tunelab.eval.runner") == "tunelab.eval" and package_of("tunelab.recipe") == "tunelab.recipe"
    used = {stage_of(m)[0] for m in mods}
    assert used == {stage for stage, *_ in LAYERS}


DOC = SRC.parent / "docs" / "architecture.md"
BEGIN, END = "<!-- layers: made by tests/test_import_graph.py from LAYERS -->", "<!-- /layers -->"


def layers_markdown() -> str:
    """docs/architecture.md's drawing of the layers and its table, made from `LAYERS`."""
    def short(entry: str) -> str:
        name = entry.removeprefix("tunelab.").removesuffix(".*")
        return f"{name}/" if entry.endswith(".*") else name

    ranks = sorted({rank for _, rank, *_ in LAYERS}, reverse=True)
    lines = ["```"]
    for rank in ranks:
        stages = [(stage, entries) for stage, r, entries, _ in LAYERS if r == rank]
        if len(stages) == 1 and len(stages[0][1]) > 1:
            row = f"{stages[0][0]}: " + " · ".join(short(e) for e in stages[0][1])
        else:
            row = "   │   ".join(stage for stage, _ in stages)
        note = "   (siblings: never import each other)" if len(stages) > 1 else ""
        lines += [f" rank {rank}  {row}{note}", "           │"]
    lines[-1] = "                                  imports point down only ▼"
    lines += ["```", "", "| stage | rank | packages / modules | what it holds |", "|---|---|---|---|"]
    for stage, rank, entries, what in LAYERS:
        lines.append(f"| {stage} | {rank} | {', '.join(f'`{e}`' for e in entries)} | {what} |")
    return "\n".join([BEGIN, *lines, END])


def test_the_architecture_doc_draws_this_table():
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    drawn = text[text.index(BEGIN):text.index(END) + len(END)]
    assert drawn == layers_markdown(), "docs/architecture.md's layers are out of date: python tests/test_import_graph.py"


if __name__ == "__main__":
    text = DOC.read_text(encoding="utf-8")
    DOC.write_text(text[:text.index(BEGIN)] + layers_markdown() + text[text.index(END) + len(END):], encoding="utf-8")
