"""One data source of a recipe (`data.train` entries, an eval task's `source`): a file, a generator, a
Hugging Face dataset or a prepared corpus, and how a missing corpus is built."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tunelab.recipe.fields import MAX_VOCAB, MIN_VOCAB, StrictSection, Text


class EncyclopediaBuild(StrictSection):
    """Generated encyclopedia articles as corpus input (`tunelab data encyclopedia`): articles.jsonl, qa.jsonl."""

    out: Text
    count: int = Field(default=3000, ge=1)
    seed: int = 0
    noise: bool = True


class TokenizerBuild(StrictSection):
    """A tokenizer trained on the corpus inputs (`tunelab tokenizer train`)."""

    out: Text
    vocab_size: int = Field(default=4096, ge=MIN_VOCAB, le=MAX_VOCAB)


class CorpusBuild(StrictSection):
    """How `tunelab run` / `train` build a missing corpus directory: the steps `tunelab data encyclopedia`,
    `tunelab tokenizer train` and `tunelab data corpus` take, each skipped when its output is already there."""

    inputs: list[Text] = Field(default_factory=list, description="JSONL/JSON/TXT files (.gz too), Parquet/Arrow/CSV "
                                                                 "files, save_to_disk folders, folders, hf:NAME")
    encyclopedia: EncyclopediaBuild | None = None
    tokenizer: Text | TokenizerBuild = Field(description="an HF tokenizer directory, or {out, vocab_size} to train")
    block_size: int = Field(default=256, ge=8)
    val_fraction: float = Field(default=0.01, ge=0, lt=1)
    seed: int = 0
    text_field: Text = "text"
    cleaning: dict[str, Any] = Field(default_factory=dict, description="rule settings, e.g. {nfkc: true} (checked "
                                                                      "against tunelab.data.corpus.clean.CleaningConfig)")

    @model_validator(mode="after")
    def _has_input(self):
        if not self.inputs and self.encyclopedia is None:
            raise ValueError("give 'inputs' (files or folders) or 'encyclopedia' (generated articles)")
        return self


HF_OPTIONS = ("config", "split", "revision", "data_files", "streaming")


class SourceConfig(StrictSection):
    """One data source: a file (`path`), a built-in generator (`generate`), a Hugging Face dataset (`hf`: a hub
    name, a `save_to_disk` folder, Parquet/Arrow/CSV/JSON files or globs, read through `datasets`), or a prepared
    pretraining corpus (`corpus`: a directory written by `tunelab data corpus`, read as memory-mapped token
    blocks)."""

    path: Text | None = None
    generate: Literal["arithmetic", "reading", "choice"] | None = None
    hf: Text | None = Field(default=None, description="a hub name (the local cache offline), a save_to_disk folder, "
                                                      "or Parquet/Arrow/CSV/JSON files (a glob)")
    config: Text | None = Field(default=None, description="hf: the dataset's configuration (subset) name")
    split: Text | None = Field(default=None, description="hf: the split (default train)")
    revision: Text | None = Field(default=None, description="hf: a hub branch, tag or commit")
    data_files: Text | list[Text] | dict[str, Text | list[Text]] | None = Field(
        default=None, description="hf: the data files of a hub dataset or folder (load_dataset's data_files)")
    streaming: bool = Field(default=False, description="hf: read rows as they come (no Arrow cache is built); "
                                                       "with count, the first count rows")
    fields: dict[Text, Text] = Field(default_factory=dict, description=(
        "the format's fields from other columns/keys, {format field: column}, e.g. {instruction: question, "
        "output: answer}"))
    corpus: Text | None = None
    build: CorpusBuild | None = Field(default=None, description="build the corpus directory when it is missing")
    format: Literal["auto", "competition", "alpaca", "conversations", "messages", "reading", "choice"] = "auto"
    count: int | None = Field(default=None, ge=1, description="generate this many / subsample to this many")
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict, description="generator options, e.g. kinds")
    shuffle_options: bool = Field(default=False, description=(
        "multiple-choice questions: each one's options reordered (seeded by `seed`), the answer moved with its "
        "option and every letter right equally often, so a model cannot learn 'always B' (tunelab.data.choice_rows)"))
    answer_style: Literal["letter", "letter_text", "text_letter"] = Field(default="letter", description=(
        "multiple-choice questions: the answer trained, the letter ('B'), the letter and the option ('B. Paris') "
        "or the option and its letter ('Paris (B)')"))
    replay: float | None = Field(default=None, gt=0, lt=1, description=(
        "a corpus replayed while fine-tuning on examples: this fraction of the training tokens are its blocks "
        "(loss on every token), so the model keeps its language modelling"))

    @model_validator(mode="after")
    def _one_of(self):
        if sum(x is not None for x in (self.path, self.generate, self.hf, self.corpus)) != 1:
            raise ValueError("give exactly one of 'path', 'generate', 'hf' or 'corpus'")
        if self.hf is None:
            given = [k for k in HF_OPTIONS if getattr(self, k) not in (None, False)]
            if given:
                raise ValueError(f"'{given[0]}' is an option of a Hugging Face dataset: it goes with 'hf: NAME'")
        if self.streaming and self.split and "[" in self.split:
            raise ValueError(f"a stream reads whole splits, not '{self.split}': give the split's name, and count: N "
                             "for its first N rows (or streaming: false)")
        if self.fields and self.path is None and self.hf is None:
            raise ValueError("'fields' maps the columns of records: it goes with 'path' or 'hf'")
        if self.build is not None and self.corpus is None:
            raise ValueError("'build' makes a corpus directory: it goes with 'corpus: DIR'")
        if self.corpus is not None and (self.shuffle_options or self.answer_style != "letter"):
            raise ValueError("'shuffle_options' and 'answer_style' apply to multiple-choice questions, not a corpus")
        if self.replay is not None and self.corpus is None:
            raise ValueError("'replay' mixes a corpus's blocks into fine-tuning: it goes with 'corpus: DIR'")
        return self


# the files a Hugging Face `hf:` source names by their suffix (load_dataset's packaged builders read them)
HF_FILE_SUFFIXES = (".parquet", ".arrow", ".csv", ".tsv", ".json", ".jsonl", ".csv.gz", ".json.gz", ".jsonl.gz")


def is_glob(p: str) -> bool:
    """Whether `p` is a glob pattern (`shards/*.parquet`) rather than one path."""
    return any(c in p for c in "*?[")


def glob_files(p: str) -> list[str]:
    """The paths the glob `p` matches (`**` spans folders)."""
    import glob
    return glob.glob(p, recursive=True)


def hf_names_local_files(name: str) -> bool:
    """Whether an `hf:` value names local data files (a file by its suffix, or a glob) rather than a hub dataset
    or a folder: such a name that matches nothing is a missing file, not a hub name."""
    return is_glob(name) or name.lower().endswith(HF_FILE_SUFFIXES)
