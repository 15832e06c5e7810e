"""Hugging Face datasets as a source, through the `datasets` library: what users keep their data in.

One name (`hf:` in a recipe, `hf:NAME` or a file among `tunelab data corpus` inputs) covers

* a `save_to_disk` folder (a Dataset, or a DatasetDict whose `split` is taken): `load_from_disk`;
* Parquet / Arrow / CSV / JSON(L) files, or a glob of them (`shards/train-*.parquet`): `load_dataset` with the
  packaged builder their suffix names;
* any other local folder (a clone of a hub repository, a folder of shards): `load_dataset(FOLDER)`;
* anything else is a hub name (`load_dataset(NAME, config, revision=…, data_files=…)`, or a packaged builder such
  as `parquet` with `data_files`). Offline (`HF_HUB_OFFLINE=1` / `HF_DATASETS_OFFLINE=1`, which `datasets` honours)
  the local cache is used; a dataset not in it is one error saying how to get it.

`fields` turns any columns into a format tunelab reads (`{instruction: question, output: answer}` renames column
`question` to `instruction`, as `Dataset.rename_columns` would), and a column it names that the dataset lacks is
an error listing the columns there are. `streaming` reads rows as they come, with no Arrow cache built; corpus
preparation always streams, so its memory stays flat however large the dataset.

`datasets` (pyarrow, pandas, fsspec) is imported only here and only when a dataset is named: `import tunelab` and
every `--help` stay as fast as before. Install it with `pip install 'tunelab[hf]'`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.recipe import MixConfig, SourceConfig, hf_names_local_files

# file suffix -> the packaged `datasets` builder that reads it
BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".tsv": "csv", ".json": "json",
            ".jsonl": "json"}
DEFAULT_SPLIT = "train"


@dataclass(frozen=True)
class DatasetSpec:
    """What names one Hugging Face dataset split (see the module doc for the kinds of `name`)."""
    name: str
    config: str | None = None
    split: str | None = None
    revision: str | None = None
    data_files: Any = None
    streaming: bool = False

    @classmethod
    def of(cls, source: SourceConfig) -> DatasetSpec:
        return cls(source.hf, source.config, source.split, source.revision, source.data_files, source.streaming)

    @property
    def label(self) -> str:
        """A short name for ids: the hub name's last part, a folder's name, a file's stem (glob characters out)."""
        stem = Path(self.name.rstrip("/")).name
        for suffix in sorted(BUILDERS, key=len, reverse=True):
            for gz in (suffix + ".gz", suffix):
                if stem.lower().endswith(gz):
                    stem = stem[: -len(gz)]
        stem = stem.translate({ord(c): None for c in "*?[]"}).strip("-_.")
        return stem or Path(self.name).parent.name or "dataset"


def _datasets():
    """The `datasets` module; its progress bars (building a split's Arrow cache, which takes a while for a large
    download) only where tunelab itself reports progress, i.e. not under `--quiet`."""
    try:
        import datasets
    except ImportError as err:
        raise TunelabError("reading a Hugging Face dataset needs the datasets library: "
                           "pip install 'tunelab[hf]'") from err
    if logging.getLogger("tunelab").isEnabledFor(logging.INFO):
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    return datasets


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    try:
        return (path / "dataset_dict.json").is_file() or (
            (path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    except OSError:
        return False


def _builder(name: str) -> str:
    lower = name.lower().removesuffix(".gz")
    for suffix, builder in BUILDERS.items():
        if lower.endswith(suffix):
            return builder
    raise TunelabError(f"cannot tell which files {name} names (expected {', '.join(BUILDERS)}, or a folder)",
                       field="hf")


def open_dataset(spec: DatasetSpec, where: str | None = ""):
    """The split `spec` names, as a `datasets.Dataset` (an `IterableDataset` when streaming). `where` prefixes the
    recipe fields errors name (`data.train.0.`); None: not a recipe's (a corpus input), errors name the input."""
    datasets = _datasets()
    path = Path(spec.name)
    field = None if where is None else f"{where}hf"
    if where is None:
        where = ""
    try:
        if is_saved_dataset(path):
            if spec.revision or spec.data_files or spec.config:
                raise TunelabError("a save_to_disk folder is read as it was saved: config, revision and data_files "
                                   "do not apply", file=spec.name, field=field)
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = _split(loaded, spec, where)
            elif spec.split is not None and loaded.split is not None and str(loaded.split) != spec.split:
                raise TunelabError(f'the saved dataset is the "{loaded.split}" split, not "{spec.split}"',
                                   file=spec.name, field=f"{where}split")
            return loaded.to_iterable_dataset() if spec.streaming else loaded
        if hf_names_local_files(spec.name):
            files = sorted(_matches(spec.name))
            if not files:
                raise TunelabError(f"no data file matches {spec.name}", field=field)
            builder = _builder(spec.name)
            options = {"delimiter": "\t"} if spec.name.lower().removesuffix(".gz").endswith(".tsv") else {}
            loaded = datasets.load_dataset(builder, data_files={DEFAULT_SPLIT: files}, streaming=spec.streaming,
                                           **options)
            return _split(loaded, spec, where)
        loaded = datasets.load_dataset(spec.name, spec.config, data_files=spec.data_files, revision=spec.revision,
                                       streaming=spec.streaming, **_split_arg(spec))
    except TunelabError:
        raise
    except ConnectionError as err:
        raise TunelabError(_not_cached(spec, datasets), field=field) from err
    except datasets.exceptions.DatasetNotFoundError as e:
        raise TunelabError(f"dataset {spec.name} not found: {_first_line(e)}", field=field) from e
    except (FileNotFoundError, ValueError) as e:
        message = _first_line(e)
        if "split" in message.lower():
            raise TunelabError(message, file=spec.name, field=f"{where}split") from e
        if "config" in message.lower() or "BuilderConfig" in message:
            raise TunelabError(message, file=spec.name, field=f"{where}config") from e
        raise TunelabError(f"cannot load {spec.name}: {message}", field=field) from e
    return _split(loaded, spec, where)


def _split_arg(spec: DatasetSpec) -> dict[str, str]:
    """A split expression (`train[:100]`, `train+validation`) goes to `load_dataset`; a plain split name is taken
    from what it returns, so an unknown one is named together with the ones there are."""
    return {"split": spec.split} if spec.split and any(c in spec.split for c in "[+") else {}


def _split(loaded, spec: DatasetSpec, where: str):
    if not hasattr(loaded, "keys"):          # already one split
        return loaded
    split = spec.split or DEFAULT_SPLIT
    if split not in loaded:
        if spec.split is None and len(loaded) == 1:
            return next(iter(loaded.values()))
        raise TunelabError(f'unknown split "{split}" (the dataset has {", ".join(loaded)})', file=spec.name,
                           field=f"{where}split")
    return loaded[split]


def _matches(pattern: str) -> list[str]:
    import glob
    return [p for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]


def _first_line(e: BaseException) -> str:
    """The library's message on one line (its later lines, such as the configurations there are, kept)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return "; ".join(lines)[:500] if lines else type(e).__name__


def _not_cached(spec: DatasetSpec, datasets) -> str:
    offline = datasets.config.HF_HUB_OFFLINE
    why = ("the machine is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if offline
           else "the Hugging Face Hub cannot be reached")
    return (f"dataset {spec.name} is not in the local cache ({datasets.config.HF_DATASETS_CACHE}) and {why}: on a "
            f"machine with access run `python -c \"import datasets; datasets.load_dataset('{spec.name}')"
            f".save_to_disk('DIR')\"` and give hf: DIR (or copy that cache here)")


def column_names(dataset) -> list[str] | None:
    """The dataset's columns, or None when a stream does not know them before its first row (CSV, JSON)."""
    names = dataset.column_names
    return list(names) if names is not None else None


def check_columns(columns: list[str], fields: dict[str, str], name: str, where: str = "") -> None:
    """A `fields` mapping that names a column the dataset lacks is an error naming the columns it has."""
    for target, column in fields.items():
        if column not in columns:
            raise TunelabError(f"column '{column}' is not in {name} (its columns: {', '.join(columns)})",
                               field=f"{where}fields.{target}")


def hf_examples(source: SourceConfig, where: str = "") -> list[Example]:
    """The examples of an `hf:` source: its rows, with `fields` renamed, read in `format` as a file's records are;
    `count` samples as for a file (the same rows a file holding them would give), or takes the first `count`
    rows of a stream."""
    from tunelab.data.formats import examples_from_rows, renamed
    spec = DatasetSpec.of(source)
    dataset = open_dataset(spec, where)
    columns = column_names(dataset)
    if columns is not None:
        check_columns(columns, source.fields, spec.name, where)
    sample = None
    if source.count is not None:
        if spec.streaming:
            dataset = dataset.take(source.count)
        elif source.count < len(dataset):
            sample = random.Random(source.seed).sample(range(len(dataset)), source.count)
            dataset = dataset.select(sample)

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal columns
        for row in dataset:
            if columns is None:
                columns = list(row)
                check_columns(columns, source.fields, spec.name, where)
            yield renamed(row, source.fields)

    try:
        return examples_from_rows(rows(), source.format, spec.name, spec.label, sample)
    except TunelabError as e:
        if e.message == "missing field" and columns is not None and e.field not in columns:
            raise TunelabError(f"no column '{e.field}' for this format (the columns: {', '.join(columns)}); map one "
                               f"with fields: {{{e.field}: COLUMN}}", file=e.file, line=e.line,
                               field=f"{where}fields.{e.field}") from e
        raise


def mix_examples(sources: list[list[Example]], mix: MixConfig) -> list[Example]:
    """The examples of several sources interleaved by `datasets.interleave_datasets` itself (probabilities, seed,
    stopping strategy): it interleaves each source's row numbers, and the examples are taken in that order."""
    datasets = _datasets()
    parts = [datasets.Dataset.from_dict({"source": [i] * len(ex), "row": list(range(len(ex)))})
             for i, ex in enumerate(sources)]
    mixed = datasets.interleave_datasets(parts, probabilities=mix.probabilities, seed=mix.seed,
                                         stopping_strategy=mix.stopping_strategy)
    return [sources[s][r] for s, r in zip(mixed["source"], mixed["row"])]


BATCH_ROWS = 256    # rows a corpus stream decodes at a time: memory holds a batch (and Arrow a record batch)


def corpus_rows(spec: DatasetSpec, text_field: str, other_fields: list[str | None]) -> Iterator[tuple[int, dict]]:
    """(row number from 1, {column: value}) of a corpus input read through `datasets` as a stream — a table file,
    a save_to_disk folder, or a hub dataset — with only the text and the `other_fields` columns decoded. Memory
    holds one batch of rows, however large the input."""
    item = spec.name
    dataset = open_dataset(spec, where=None)
    columns = column_names(dataset)
    if columns is not None:
        _check_text_column(columns, text_field, str(item))
    wanted = list(dict.fromkeys([text_field] + [f for f in other_fields if f]))
    row = 0
    # Arrow record batches, of which only the wanted columns become Python values: decoding every column of
    # every row as dicts (or `select_columns`, a per-row step) made reading 10x slower
    for batch in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS):
        if columns is None:
            columns = batch.column_names
            _check_text_column(columns, text_field, str(item))
        values = [(c, batch.column(c).to_pylist()) for c in wanted if c in batch.column_names]
        for i in range(batch.num_rows):
            row += 1
            yield row, {c: v[i] for c, v in values}


def _check_text_column(columns: list[str], text_field: str, name: str) -> None:
    if text_field not in columns:
        raise TunelabError(f"no column '{text_field}' to read the text from (its columns: {', '.join(columns)})",
                           file=name, field="text_field")
