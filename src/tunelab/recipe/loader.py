"""Loading a recipe: the YAML read, MindFormers-style sections (`runner_config`, `pet_config`) mapped to
tunelab's, `--set a.b=value` overrides applied, relative paths resolved, data files checked, and every
problem one TunelabError naming the file, the line and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tunelab.errors import TunelabError
from tunelab.recipe.eval import EvalConfig
from tunelab.recipe.schema import Recipe
from tunelab.recipe.source import glob_files, hf_names_local_files, is_glob


# --- MindFormers aliases -------------------------------------------------------------------------

MINDFORMERS_MODULES = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj",
                       "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def mindformers_target_to_hf(pattern: str) -> str:
    """Map MindFormers module names inside a target regex to HF names: '.*wq|.*wv' -> '.*q_proj|.*v_proj'."""
    return re.sub(r"\b(wq|wk|wv|wo|w1|w2|w3)\b", lambda m: MINDFORMERS_MODULES[m.group(1)], pattern)


def _section(raw: dict[str, Any], key: str, file: str) -> dict[str, Any]:
    """The recipe's `key` section as a mapping (empty when absent), for an alias to merge into."""
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TunelabError(f"expected a mapping, got {type(value).__name__}", file=file, field=key)
    return value


def _apply_aliases(raw: dict[str, Any], file: str) -> dict[str, Any]:
    raw = dict(raw)
    runner = raw.pop("runner_config", None)
    if runner is not None:
        if not isinstance(runner, dict):
            raise TunelabError("expected a mapping", file=file, field="runner_config")
        train = dict(_section(raw, "train", file))
        for key, value in runner.items():
            if key not in ("epochs", "batch_size"):
                raise TunelabError("unknown key (runner_config accepts epochs, batch_size)", file=file,
                                   field=f"runner_config.{key}")
            train[key] = value
        raw["train"] = train
    pet = raw.pop("pet_config", None)
    if pet is not None:
        if not isinstance(pet, dict):
            raise TunelabError("expected a mapping", file=file, field="pet_config")
        lora = dict(_section(raw, "lora", file))
        names = {"lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout",
                 "target_modules": "target_modules"}
        for key, value in pet.items():
            if key == "pet_type":
                if str(value).lower() != "lora":
                    raise TunelabError(f"only pet_type 'lora' is supported, got '{value}'", file=file,
                                       field="pet_config.pet_type")
                lora["enabled"] = True
            elif key in names:
                if key == "target_modules" and isinstance(value, str):
                    value = mindformers_target_to_hf(value)
                lora[names[key]] = value
            else:
                raise TunelabError(f"unknown key (accepted: pet_type, {', '.join(names)})", file=file,
                                   field=f"pet_config.{key}")
        raw["lora"] = lora
    return raw


# --- loading and overrides -----------------------------------------------------------------------

def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested mappings; a numeric part indexes a list (`data.train.0.path`)."""
    keys = dotted.split(".")
    node: Any = raw
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise TunelabError(f"'{key}' is not an index of a list of {len(node)}", field=dotted)
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise TunelabError(f"'{keys[i - 1]}' is not a section", field=dotted)
        if last:
            node[key] = value
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """Parse `key.sub=value` strings; values are read as YAML scalars (so 3, 1e-3, true, [a, b] work)."""
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise TunelabError(f"expects key=value, got '{pair}'", field="overrides")
        key, value = pair.split("=", 1)
        if "" in (k.strip() for k in key.split(".")):  # '=5', 'train..lr=1'
            raise TunelabError(f"expects key=value with a dotted key such as train.lr, got '{pair}'",
                               field="overrides")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        out.append((key.strip(), parsed))
    return out


def _exists(path: Path, kind: str = "any") -> bool:
    """Whether `path` exists (as a file / a directory for `kind`); a path the file system cannot even look up
    (a name longer than it allows) does not, instead of raising OSError."""
    try:
        return {"any": path.exists, "file": path.is_file, "dir": path.is_dir}[kind]()
    except OSError:
        return False


def _resolve_paths(recipe: Recipe, base: Path) -> None:
    """Resolve relative paths as docs/recipes.md says: against the recipe's folder first, so a recipe and its data
    travel together; a path that is not there is the working directory's (a run directory such as
    `runs/smollm2-math` that another recipe produced), or a hub name, as written."""
    def resolve(p: str) -> str:
        cand = Path(p)
        if cand.is_absolute():
            return p
        beside = base / cand
        return str(beside) if _exists(beside) else p

    def resolve_glob(p: str) -> str:
        """A data file or a glob of them (`shards/*.parquet`), else `p` as it is (a hub name)."""
        if not is_glob(p) or Path(p).is_absolute():
            return resolve(p)
        return str(base / p) if glob_files(str(base / p)) else p
    for src in [*recipe.data.train, *(t.source for t in recipe.eval.tasks if t.source is not None)]:
        if src.path:
            src.path = resolve(src.path)
        if src.hf:
            src.hf = resolve_glob(src.hf)
        if isinstance(src.data_files, str):
            src.data_files = resolve_glob(src.data_files)
        elif isinstance(src.data_files, list):
            src.data_files = [resolve_glob(f) for f in src.data_files]
        elif isinstance(src.data_files, dict):
            src.data_files = {k: resolve_glob(v) if isinstance(v, str) else [resolve_glob(f) for f in v]
                              for k, v in src.data_files.items()}
        if src.corpus:
            src.corpus = resolve(src.corpus)
        if src.build:
            src.build.inputs = [resolve(p) for p in src.build.inputs]
            if isinstance(src.build.tokenizer, str):
                src.build.tokenizer = resolve(src.build.tokenizer)
    if recipe.model.path and not recipe.model.path.startswith(("hf:",)):
        recipe.model.path = resolve(recipe.model.path)
    for term in [*recipe.train.grpo.rewards, *recipe.train.rft.rewards]:  # a function in a file beside the recipe
        function = term.get("function")
        if isinstance(function, str) and ".py:" in function:
            file, name = function.rsplit(":", 1)
            term["function"] = f"{resolve(file)}:{name}"


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_data: bool = True) -> Recipe:
    """Load and validate a recipe file, applying aliases then `--set` overrides; `check_data=False` for what
    reads no data (a memory plan), so that a recipe can be checked before its files are there."""
    raw, text = read_recipe_raw(path, overrides)
    return recipe_from_raw(raw, path, text, check_data)


def read_recipe_raw(path: str | Path, overrides: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """(the recipe as written, MindFormers aliases mapped and `--set` overrides applied; the file's text), not yet
    validated: what a sweep changes field by field before each trial validates it (`recipe_from_raw`)."""
    p = Path(path)
    from tunelab.records import read_yaml
    raw, text = read_yaml(p)
    if not isinstance(raw, dict):
        raise TunelabError("a recipe must be a YAML mapping", file=p)
    raw = _apply_aliases(raw, str(p))
    for key, value in parse_overrides(overrides or []):
        _set_path(raw, key, value)
    return raw, text


def recipe_from_raw(raw: dict[str, Any], path: str | Path, text: str = "", check_data: bool = True) -> Recipe:
    """Validate a raw recipe read from `path`: relative data paths resolve against its folder, and errors name
    its lines (`text`)."""
    p = Path(path)
    recipe = validate_recipe(raw, p, text)
    _resolve_paths(recipe, p.parent)
    if check_data:
        _check_data_files(recipe, p, text)
    recipe._stage_recipes = [_stage_recipe(raw, recipe, k, p, text, check_data) for k in range(len(recipe.stages))]
    for stage in recipe._stage_recipes:  # each validated with the hand-in the chain may make of it (five
        stage.score = stage.score.model_copy(update={"handin": None})  # checkpoints); the chain writes it
    return recipe


def _stage_recipe(raw: dict[str, Any], recipe: Recipe, k: int, path: Path, text: str, check_data: bool) -> Recipe:
    """Stage k of a chain as a whole recipe (`tunelab.recipe.stages`); a mistake in what the stage changes is
    named under `stages.k`, one in what it keeps from the recipe under the recipe's key, said of the stage."""
    from tunelab.recipe.stages import stage_raw
    stage = recipe.stages[k]
    try:
        return recipe_from_raw(stage_raw(raw, recipe.stages, k), path, "", check_data)
    except TunelabError as e:
        section = (e.field or "").split(".")[0]
        if section in stage.changes():
            loc = ("stages", k, *(int(x) if x.isdigit() else x for x in e.field.split(".")))
            raise TunelabError(e.message, file=path, line=line_of_key(text, loc) if text else None,
                               field=".".join(str(x) for x in loc)) from e
        where = tuple(e.field.split(".")) if e.field else ("stages", k, "name")  # the key, else the stage
        raise TunelabError(f"in stage '{stage.name}': {e.message}", file=path,
                           line=line_of_key(text, where) if text else None, field=e.field) from e


def set_field(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set the dotted field `dotted` of a raw recipe (`lora.rank`, `data.train.0.count`), as `--set` does."""
    _set_path(raw, dotted, value)


def _check_data_files(recipe: Recipe, file: Path, text: str) -> None:
    """A missing data file is reported when the recipe loads, before a run directory is created."""
    built = {s.corpus for s in recipe.data.train if s.build}  # made by the run before anything reads them
    sources = [(("data", "train", i), s) for i, s in enumerate(recipe.data.train)]
    sources += [(("eval", "tasks", i, "source"), t.source) for i, t in enumerate(recipe.eval.tasks)
                if t.source is not None]
    for loc, src in sources:
        if src.path and not _exists(Path(src.path)):
            loc = loc + ("path",)
            raise TunelabError(f"data file not found: {src.path}", file=file, line=line_of_key(text, loc),
                               field=".".join(str(k) for k in loc))
        if src.hf and hf_names_local_files(src.hf) and not (glob_files(src.hf) if is_glob(src.hf) else
                                                            _exists(Path(src.hf), "file")):
            loc = loc + ("hf",)
            raise TunelabError(f"no data file matches {src.hf}", file=file, line=line_of_key(text, loc),
                               field=".".join(str(k) for k in loc))
        if src.corpus and src.corpus not in built and not _exists(Path(src.corpus) / "meta.json", "file"):
            loc = loc + ("corpus",)
            what = "not a finished corpus directory (no meta.json)" if _exists(Path(src.corpus), "dir") else "not found"
            raise TunelabError(f"corpus {src.corpus}: {what}; prepare it with `tunelab data corpus`", file=file,
                               line=line_of_key(text, loc), field=".".join(str(k) for k in loc))


def validate_recipe(raw: dict[str, Any], file: str | Path = "<recipe>", text: str = "") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise schema_error(e, file, text) from e


def validate_eval(raw: dict[str, Any]) -> EvalConfig:
    """An `eval:` section on its own (what `tunelab eval` builds from its flags); errors name `eval.…` fields
    as they would in a recipe."""
    try:
        return EvalConfig.model_validate(raw)
    except ValidationError as e:
        raise schema_error(e, prefix=("eval",)) from e


def schema_error(e: ValidationError, file: str | Path | None = None, text: str = "",
                 prefix: tuple = ()) -> TunelabError:
    """The first problem of a validation error as one TunelabError naming the field (and its line in `text`)."""
    loc, kind, msg, others = _first_problem(e.errors())
    loc = prefix + loc
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "missing required key"
    line = line_of_key(text, loc) if text else None
    more = f" (and {others} more problem(s))" if others else ""
    return TunelabError(msg + more, file=file, line=line, field=".".join(str(x) for x in loc) or None)


def _first_problem(errors: list[dict]) -> tuple[tuple, str, str, int]:
    """(field path, error type, message, how many other problems) of the first problem.

    pydantic reports every branch of a union (`tokenizer: str | TokenizerBuild`) under the branch's tag
    ('tokenizer.str', 'tokenizer.TokenizerBuild.vocab_size'). The branch whose type matched the input is the one
    the user meant, so its problem is the one named, without the tag; when no branch's type matched, the field
    itself is named with what each branch expects."""
    err, loc = errors[0], tuple(errors[0]["loc"])
    at = next((i for i, x in enumerate(loc) if _is_union_tag(x)), None)
    if at is None:
        return loc, err["type"], err["msg"], len(errors) - 1
    field = loc[:at]
    branches = [e for e in errors if len(e["loc"]) > at and tuple(e["loc"])[:at] == field
                and _is_union_tag(e["loc"][at])]
    others = len(errors) - len(branches)
    matched = [e for e in branches if len(e["loc"]) > at + 1 or not e["type"].endswith("_type")]
    if not matched:
        return field, "union", "; or ".join(e["msg"] for e in branches), others
    e = matched[0]
    return (field + tuple(x for x in e["loc"][at + 1:] if not _is_union_tag(x)), e["type"], e["msg"],
            others + len(matched) - 1)


def _is_union_tag(part) -> bool:
    """Whether a pydantic error location part names a union branch ('str', 'constrained-str', 'list[str]',
    'TokenizerBuild') rather than a recipe key (snake_case) or a list index."""
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or "-" in part
                                      or part in {"str", "int", "float", "bool", "dict", "list", "none"})


def line_of_key(text: str, loc: tuple) -> int | None:
    """Line number of the key at `loc` (e.g. ('eval', 'tasks', 0, 'source', 'count')) within the YAML text.

    Walks the YAML node tree so a key name used in several sections points at the right one; falls back to
    the first line naming the last key when the path is not in the text (e.g. it came from an alias or --set).
    """
    try:
        node = yaml.compose(text)
        line = None
        for k in loc:
            if isinstance(node, yaml.MappingNode) and isinstance(k, str):
                pair = next(((kn, vn) for kn, vn in node.value if kn.value == k), None)
                if pair is None:
                    raise LookupError(k)
                line, node = pair[0].start_mark.line + 1, pair[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(k, int) and 0 <= k < len(node.value):
                node = node.value[k]
                line = node.start_mark.line + 1
            else:
                raise LookupError(k)
        if line is not None:
            return line
    except (yaml.YAMLError, LookupError):
        pass
    keys = [k for k in loc if isinstance(k, str)]
    if not keys:
        return None
    pattern = re.compile(rf"^\s*-?\s*{re.escape(keys[-1])}\s*:")
    for i, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return i
    return None


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
