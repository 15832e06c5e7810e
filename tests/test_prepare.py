"""A recipe's `build` section: `tunelab train` makes the articles, the tokenizer and the corpus it names, once."""

from __future__ import annotations

import pytest
import yaml

from tunelab.cli import main
from tunelab.data.corpus.store import CorpusBlocks, read_meta
from tunelab.errors import TunelabError
from tunelab.pipeline.build_corpus import build_corpora
from tunelab.recipe import load_recipe


def _recipe(tmp_path, **build):
    data = tmp_path / "data"
    raw = {
        "name": "mini", "output_dir": str(tmp_path / "runs"),
        "model": {"preset": "micro", "from_scratch": True},
        "data": {"max_seq_len": 128, "train": [{"corpus": str(data / "corpus"), "build": {
            "encyclopedia": {"out": str(data / "articles"), "count": 60, "seed": 3},
            "tokenizer": {"out": str(data / "tok"), "vocab_size": 320}, "block_size": 128,
            "val_fraction": 0.2, **build}}]},
        "train": {"max_steps": 3, "batch_size": 2, "log_every": 1, "threads": 1, "num_checkpoints": 1},
    }
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path, data


def test_train_builds_articles_tokenizer_and_corpus_then_reuses_them(tmp_path, capsys):
    path, data = _recipe(tmp_path)
    assert main(["train", str(path)]) == 0
    assert (data / "articles" / "qa.jsonl").is_file() and (data / "tok" / "tokenizer.json").is_file()
    meta = read_meta(data / "corpus")
    assert meta["block_size"] == 128 and meta["val_fraction"] == 0.2 and meta["vocab_size"] == 320
    assert len(CorpusBlocks(data / "corpus", "val")) > 0
    assert "generating 60 encyclopedia articles" in capsys.readouterr().err
    stamp = (data / "corpus" / "meta.json").stat().st_mtime_ns
    build_corpora(load_recipe(path))          # everything exists: nothing is rebuilt
    assert (data / "corpus" / "meta.json").stat().st_mtime_ns == stamp
    assert "generating" not in capsys.readouterr().err


def test_a_bad_build_section_is_a_one_line_error(tmp_path, capsys):
    path, _ = _recipe(tmp_path, cleaning={"nfck": True})
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown cleaning rule(s) nfck" in err and "data.train.0.build.cleaning" in err
    with pytest.raises(TunelabError, match="goes with 'corpus: DIR'"):
        from tunelab.recipe import validate_recipe
        validate_recipe({"name": "x", "model": {"preset": "micro", "from_scratch": True},
                         "data": {"train": [{"generate": "arithmetic", "build": {"inputs": ["a"], "tokenizer": "t"}}]}})
