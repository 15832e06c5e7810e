"""The documentation's commands, as a new user would run them, so README.md and docs/ cannot drift from the CLI.

Commands are read from README.md and docs/*.md alike (README first, then docs/ by file name; "the README" below
means all of them): every line of a ```bash block that starts with `tunelab`, with its `\\` continuations and
without its `# comment`. Those whose verb needs no model weights (data, tokenizer,
ratio, score, grade) run in README order, in-process through `tunelab.cli.main`, in a temp dir that looks
like a clone's root (`recipes/` and `models/` link to the repository's), and each must exit 0. Every verb
and sub-verb the README names, in a bash block or in inline code, must exist and answer `--help`.

What the README leaves to the user is made small and local here, and every rule below must still match
something in the README (a stale rule fails the test):
* SMALLER: the competition-sized counts (800k problems, 90k subsample, 4,000 articles) become small ones.
* MODEL_DIRS: `data check` reads the tokenizer of the user's Llama-3 directory; the shipped tiny base's
  tokenizer stands in (no hub, no weights downloaded).
* FIXTURES: files a user brings or a model run writes (the SQuAD and multiple-choice files from the
  README's own format examples, GLUE TSVs, prediction files, an exported model folder) are written just
  before the first command that names them.
`tunelab ratio llama3-8b` needs no config from the hub: `llama3-8b` is a preset built on the meta device;
its output must equal the numbers the README prints under it. Also checked: the layout's verb list is the
CLI's, the README's recipe YAML validates, and a LoRA model is wrapped without a library FutureWarning.

README.md itself is the front door: at most 10 KB, its two commands (set up + quickstart, set up + tests) exactly
as users and CI run them, and every relative link in README.md and docs/*.md points at a file that exists (and,
with a `#fragment`, at a heading in it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml

from tunelab.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = "\n".join(path.read_text(encoding="utf-8") for path in DOC_FILES)   # README.md and docs/*.md
README_MAX_BYTES = 10 * 1024
SETUP = "python3 -m venv .venv && . .venv/bin/activate && "
MAIN_COMMAND = SETUP + "pip install -r requirements-dev.txt -e . && tunelab run recipes/quickstart.yaml"
TEST_COMMAND = SETUP + "pip install -q -r requirements-dev.txt -e . && python -m pytest -q -n auto"
MODEL_FREE = {"data", "tokenizer", "ratio", "score", "grade"}

SMALLER = {("--count", "800000"): "800", ("--count", "90000"): "90", ("--count", "4000"): "300"}
MODEL_DIRS = {"/models/Meta-Llama-3-8B": str(ROOT / "models" / "tiny-base")}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)


def readme_commands() -> list[list[str]]:
    """argv (after `tunelab`) of every bash line in README.md and docs/*.md that starts with `tunelab`, in order."""
    commands = []
    for block in bash_blocks(README):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(re.sub(r"(^|\s)#.*", "", line))   # bash: `#` starts a comment only as a word
            if argv and argv[0] == "tunelab":
                commands.append(argv[1:])
    return commands


RUNNABLE = [argv for argv in readme_commands() if argv[0] in MODEL_FREE]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def named_verbs() -> list[tuple[str, ...]]:
    """(verb,) or (verb, sub-verb) for every `tunelab VERB [SUB]` in the README's bash blocks and inline code."""
    code = "\n".join(bash_blocks(README)) + "\n" + "\n".join(re.findall(r"`([^`\n]+)`", README))
    verbs = _subparsers(build_parser())
    named = set()
    for verb, sub in re.findall(r"(?<![\w./-])tunelab ([a-z]+)(?: ([a-z][a-z-]*))?", code):
        assert verb in verbs, f"the README names `tunelab {verb}`, which is not a verb"
        subs = _subparsers(verbs[verb])
        if subs and sub:
            assert sub in subs, f"the README names `tunelab {verb} {sub}`, which is not a sub-verb of {verb}"
            named.add((verb, sub))
        else:
            named.add((verb,))
    return sorted(named)


# --- files the README assumes the user has ---------------------------------------------------------

def _json_block(marker: str) -> str:
    blocks = [b for b in re.findall(r"^```json\n(.*?)^```", README, re.S | re.M) if marker in b]
    assert len(blocks) == 1, f"expected one README json example containing {marker!r}"
    return blocks[0]


def _arithmetic_predictions(path: Path, argv: list[str]) -> None:
    """What `tunelab run` writes for the --gold dev file: id and prediction; every 4th has no number."""
    dev = json.loads(Path(argv[argv.index("--gold") + 1]).read_text(encoding="utf-8"))
    rows = [{"id": r["id"], "prediction": r["solution"] if i % 4 else "I cannot compute that."}
            for i, r in enumerate(dev)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _glue_data(path: Path, argv: list[str]) -> None:
    """CoLA TSVs as GLUE ships them (no header: source, label, original mark, sentence)."""
    path.mkdir()
    for name, n in (("train.tsv", 60), ("dev.tsv", 20)):
        rows = [f"gj04\t{i % 2}\t{'' if i % 2 else '*'}\tSentence number {i} of {name}." for i in range(n)]
        (path / name).write_text("\n".join(rows) + "\n", encoding="utf-8")


def _cola_labels(flip_every: int):
    def write(path: Path, argv: list[str]) -> None:
        gold = [line.split("\t")[1] for line in Path("glue_data/dev.tsv").read_text().splitlines()]
        labels = [str(1 - int(g)) if flip_every and i % flip_every == 0 else g for i, g in enumerate(gold)]
        path.write_text("\n".join(labels) + "\n", encoding="utf-8")
    return write


def _arena_votes(path: Path, argv: list[str]) -> None:
    """An arena database as `tunelab ui` writes it: a few anonymous battles, a tie and a named vote."""
    from tunelab.serve.arena import ArenaStore
    store = ArenaStore(path)
    for i, (vote, anonymous) in enumerate((("left", True), ("right", True), ("tie", True), ("left", False),
                                           ("left", True))):
        store.record("sft", "dpo", vote, f"{i} + {i} = ?", f"{2 * i}", f"{2 * i + 1}", anonymous=anonymous,
                     battle=f"b{i}")
    store.close()


def _preference_file(shape: str):
    def write(path: Path, argv: list[str]) -> None:
        if shape == "ultrafeedback":
            rows = [{"prompt": f"q{i}", "chosen": [{"role": "user", "content": f"q{i}"},
                                                   {"role": "assistant", "content": "good"}],
                     "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "bad"}]}
                    for i in range(6)]
        elif shape == "judged":
            rows = [{"prompt": f"q{i}", "answer_a": "a", "answer_b": "b", "reference": "a",
                     "verdict": ["A", "B", "tie"][i % 3]} for i in range(6)]
        else:
            rows = [{"chosen": f"\n\nHuman: h{i}\n\nAssistant: yes", "rejected": f"\n\nHuman: h{i}\n\nAssistant: no"}
                    for i in range(6)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return write


def _parquet_shards(path: Path, argv: list[str]) -> None:
    """A Chinese wiki as Parquet shards (a `text` column), as the hub serves such corpora."""
    import datasets
    path.mkdir()
    texts = [f"第{i}篇：北京是中国的首都，有很多名胜古迹。The Great Wall is near Beijing。长城很长！" * 3 for i in range(90)]
    for k in range(3):
        datasets.Dataset.from_dict({"id": [f"wiki-{k}-{i}" for i in range(30)], "text": texts[30 * k: 30 * k + 30]}
                                   ).to_parquet(path / f"train-{k:05d}-of-00003.parquet")


FIXTURES = {
    "runs/arena/votes.db": _arena_votes,   # the arena's votes (`tunelab ui` writes them)
    "ultrafeedback.jsonl": _preference_file("ultrafeedback"),
    "hh-rlhf.jsonl": _preference_file("hh"),
    "runs/minigpt-cpu-data/judged.jsonl": _preference_file("judged"),   # what `tunelab judge --out` writes
    "runs/tiny-dpo-data/judged.jsonl": _preference_file("judged"),
    "runs/llama3-8b-math-lora/eval/step-000500/arithmetic.predictions.jsonl": _arithmetic_predictions,
    "dev-v1.1.json": lambda p, _: p.write_text(_json_block('"version": "1.1"'), encoding="utf-8"),
    "predictions.json": lambda p, _: p.write_text(json.dumps({"q1": "in 1889"}), encoding="utf-8"),
    "mc.jsonl": lambda p, _: p.write_text(_json_block('"choices"'), encoding="utf-8"),
    "preds.jsonl": lambda p, _: p.write_text("The answer is (B)\n答案：B\n", encoding="utf-8"),
    "glue_data": _glue_data,
    "result_CoLA.txt": _cola_labels(flip_every=5),   # what `tunelab predict` writes: one label per line
    "ANSWERS.txt": _cola_labels(flip_every=0),
    "merged": lambda p, _: p.symlink_to(ROOT / "models" / "tiny-base"),   # an exported model folder
    "wiki_parquet": _parquet_shards,
}


def _localise(argv: list[str], used: set) -> list[str]:
    out = []
    for i, token in enumerate(argv):
        key = (argv[i - 1], token) if i else None
        if key in SMALLER:
            used.add(key)
            token = SMALLER[key]
        for hub_dir, local in MODEL_DIRS.items():
            if hub_dir in token:
                used.add(hub_dir)
                token = token.replace(hub_dir, local)
        out.append(token)
    return out


def _write_fixtures(argv: list[str], used: set) -> None:
    for token in argv:
        name = token.split("=")[-1].rstrip("/")
        if name in FIXTURES and not Path(name).exists():
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            FIXTURES[name](Path(name), argv)
            used.add(name)


USED: set = set()   # the SMALLER / MODEL_DIRS / FIXTURES rules the README's commands needed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run RUNNABLE in order in one clone-like temp dir; {command: (exit code, stdout, stderr)}.

    A command that crashes is recorded, not raised, so the commands after it still run and each failure is
    reported by its own test."""
    work = tmp_path_factory.mktemp("readme")
    (work / "recipes").symlink_to(ROOT / "recipes")
    (work / "models").symlink_to(ROOT / "models")
    # the SQuAD dev file the competition recipe's retention check reads (the user brings it)
    (work / "data").mkdir()
    (work / "data" / "dev-v1.1.json").write_text(_json_block('"version": "1.1"'), encoding="utf-8")
    results = {}
    with contextlib.chdir(work), pytest.MonkeyPatch.context() as mp:
        # no network: a path the README gets wrong must fail at once, not after the hub client's retries
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        for argv in RUNNABLE:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    _write_fixtures(argv, USED)
                    rc = main(_localise(argv, USED))
                except SystemExit as e:  # argparse: a flag the README shows does not exist
                    rc = e.code
                except Exception as e:  # noqa: BLE001 - reported by this command's test
                    rc = f"{type(e).__name__}: {e}"
            results[shlex.join(argv)] = (rc, out.getvalue(), err.getvalue())
    return results


def test_every_stand_in_rule_is_still_needed(runs):
    unused = (set(SMALLER) | set(MODEL_DIRS) | set(FIXTURES)) - USED
    assert not unused, f"rules no README command needs any more (update this test): {sorted(unused)}"


def test_readme_has_the_model_free_commands():
    verbs = {tuple(argv[:2]) for argv in RUNNABLE}
    for expected in [("data", "arithmetic"), ("data", "check"), ("data", "corpus"), ("tokenizer", "train"),
                     ("ratio", "llama3-8b"), ("score", "--formula"), ("grade", "arithmetic"), ("grade", "glue")]:
        assert expected in verbs, f"no README command `tunelab {' '.join(expected)} …` found: parsing broke?"


@pytest.mark.parametrize("command", [pytest.param(shlex.join(a), id=shlex.join(a)) for a in RUNNABLE])
def test_readme_command_exits_0(runs, command):
    rc, out, err = runs[command]
    assert rc == 0, f"`tunelab {command}` exited {rc}:\n{err[-2000:]}"


def _output(runs, command_start: str) -> str:
    outs = [out for cmd, (_, out, _) in runs.items() if cmd.startswith(command_start)]
    assert len(outs) == 1, f"expected one README command `tunelab {command_start}…`, found {len(outs)}"
    return outs[0]


def test_ratio_prints_the_readme_numbers(runs):
    """Each `tunelab ratio llama3-8b` command in the docs prints the trainable count and ratio written beside it
    (LoRA's, and the low-parameter adapters' of the stage-2 section)."""
    found = re.findall(r"tunelab (ratio llama3-8b [^\n#]*?)\s*(?:\\\n[^\n#]*)?\n?\s*#\s+trainable: (\d+)\s+ratio: ([\d.]+)",
                       README)
    assert len(found) >= 2, found
    for command, trainable, ratio in found:
        out = _output(runs, command.strip())
        assert f"trainable: {trainable}\n" in out and f"ratio: {ratio}\n" in out, command


def test_list_kinds_shows_as_many_kinds_as_the_readme_says(runs):
    out = _output(runs, "data arithmetic --list-kinds")
    claims = {int(n) for n in re.findall(r"(\d+) kinds", README)}
    assert claims == {len(out.splitlines())}


def test_grade_arithmetic_reads_the_run_s_predictions(runs):
    out = _output(runs, "grade arithmetic")
    assert re.search(r"accuracy +75\.00%", out) and re.search(r"no_number +25\.00%", out)


@pytest.mark.parametrize("verb", [" ".join(v) for v in named_verbs()])
def test_named_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([*verb.split(), "--help"])
    assert e.value.code == 0 and f"usage: tunelab {verb}" in capsys.readouterr().out


def test_every_flag_in_a_readme_command_exists():
    """Commands that need a model or a server are not run, but the flags they show must be real."""
    verbs = _subparsers(build_parser())
    for argv in readme_commands():
        parser = verbs[argv[0]]
        subs = _subparsers(parser)
        if subs:
            parser = subs[argv[1]]
        options = {o for action in parser._actions for o in action.option_strings}
        flags = [t.strip("[]").split("=")[0] for t in argv if t.strip("[").startswith("--")]
        unknown = [f for f in flags if f not in options]
        assert not unknown, f"`tunelab {shlex.join(argv)}`: no such option {unknown}"


def test_layout_lists_every_verb():
    listed = re.search(r"verbs only \(tunelab ([^)]*)\)", README)
    assert listed, "docs/architecture.md's layout no longer lists the verbs as `cli  verbs only (tunelab run | …)`"
    assert sorted(v.strip() for v in listed.group(1).split("|")) == sorted(_subparsers(build_parser()))


def test_recipe_examples_validate(tmp_path, monkeypatch):
    """The README's recipe YAML is a valid recipe, and its `eval:` fragment a valid eval section."""
    from tunelab.recipe import load_recipe
    blocks = re.findall(r"^```yaml\n(.*?)^```", README, re.S | re.M)
    fulls = [b for b in blocks if re.search(r"^name: ", b, re.M)]
    fragments = [b for b in blocks if b.startswith("eval:")]
    assert len(fulls) == 1 and len(fragments) == 1, "expected one recipe and one eval: fragment"
    full, fragment = fulls[0], fragments[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(ROOT / "models")
    raw = yaml.safe_load(full)
    for path in re.findall(r"path: ([\w./-]+\.(?:jsonl|json|txt))\b", full + fragment):
        (tmp_path / path).write_text('{"problem": "1 + 1", "solution": "1 + 1 = 2"}\n', encoding="utf-8")
    (tmp_path / "full.yaml").write_text(full, encoding="utf-8")
    assert load_recipe(tmp_path / "full.yaml").name == raw["name"]
    raw["eval"] = yaml.safe_load(fragment)["eval"]
    (tmp_path / "fragment.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    assert [t.task for t in load_recipe(tmp_path / "fragment.yaml").eval.tasks] == [
        "squad", "choice", "ppl", "rougel", "instructions", "knowledge", "forms", "base_agreement"]


def test_lora_wrapping_prints_no_library_future_warning():
    """Every LoRA run printed transformers' `is_gradient_checkpointing` FutureWarning, raised inside peft;
    `quiet_transformers()` (called by train, eval, serve and export before any model) ignores that one
    message. The first half fails once peft stops reading the alias: then the filter can go."""
    import warnings

    from peft import get_peft_model

    from tunelab.model.loading import quiet_transformers
    from tunelab.model.lora import make_lora_config
    from tunelab.model.presets import build_on_meta, preset_config

    def wrap() -> list[str]:
        get_peft_model(build_on_meta(preset_config("micro")), make_lora_config(4, 8, 0.0, ["q_proj"]))
        return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert any("is_gradient_checkpointing" in m for m in wrap())
        caught.clear()
        quiet_transformers()
        assert wrap() == []


# --- README.md as the front door, and links that lead somewhere ----------------------------------------------

def test_readme_is_at_most_10_kb():
    size = len((ROOT / "README.md").read_text(encoding="utf-8").encode("utf-8"))
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes (at most {README_MAX_BYTES}): move details to docs/"


def test_readme_keeps_its_two_commands():
    """The main job and the tests, each one line a user copies on a fresh machine; CI runs the second."""
    lines = [line for block in bash_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
             for line in block.splitlines()]
    assert MAIN_COMMAND in lines and TEST_COMMAND in lines
    assert (ROOT / ".ci" / "run").read_text(encoding="utf-8").rstrip().splitlines()[-1] == TEST_COMMAND


def _outside_code(text: str) -> str:
    """Markdown without fenced blocks and inline code, where a `[x](y)` is not a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped (letters of any script, digits, `-`, `_` kept),
    spaces to hyphens."""
    heads = re.findall(r"^#{1,6} +(.+?) *$", re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"),
                                                      flags=re.S | re.M), re.M)
    return {re.sub(r"[^\w\- ]", "", h.replace("`", "").lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("doc", [pytest.param(p, id=str(p.relative_to(ROOT))) for p in DOC_FILES])
def test_relative_links_point_at_existing_files(doc):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _outside_code(doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto:
            continue
        file, _, fragment = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {dest.name})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links {broken}"
