"""A binary file handed to a text reader is named for what it is (a SQLite database, gzip, Parquet, Arrow, zip)
before its encoding is checked: an arena's votes.db read as JSONL said "not UTF-8 text (bad byte 0xce at offset
106)", which names no mistake. Real files of each kind, written by the libraries that make them."""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
import zipfile
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.data.formats import read_examples
from tunelab.errors import TunelabError
from tunelab.records import NotTextError, decode_text, iter_records, read_json, read_yaml

RECORDS = [{"problem": "1 + 1", "solution": "1 + 1 = 2"}, {"problem": "2 + 2", "solution": "2 + 2 = 4"}]
JSONL = "".join(json.dumps(r) + "\n" for r in RECORDS).encode("utf-8")


def sqlite_file(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE votes (id INTEGER PRIMARY KEY, prompt TEXT)")
    con.execute("INSERT INTO votes (prompt) VALUES ('中文的问题')")
    con.commit()
    con.close()
    return path


def gzip_file(path: Path) -> Path:
    path.write_bytes(gzip.compress(JSONL))
    return path


def zip_file(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.jsonl", JSONL)
    return path


def parquet_file(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(RECORDS), path)
    return path


def arrow_file(path: Path) -> Path:
    import pyarrow as pa
    table = pa.Table.from_pylist(RECORDS)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


KINDS = [  # (writer, file name, kind, what the message says)
    (sqlite_file, "votes.db", "sqlite", "a SQLite database"),
    (gzip_file, "data.jsonl.gz", "gzip", "a gzip file"),
    (zip_file, "data.zip", "zip", "a zip archive"),
    (parquet_file, "data.parquet", "parquet", "a Parquet file"),
    (arrow_file, "data.arrow", "arrow", "an Arrow file"),
]


@pytest.mark.parametrize("write, name, kind, says", KINDS, ids=[k[2] for k in KINDS])
def test_a_binary_file_is_named_for_what_it_is(tmp_path, write, name, kind, says):
    path = write(tmp_path / name)
    with pytest.raises(NotTextError) as e:
        list(iter_records(path))
    assert e.value.found == kind and e.value.file == str(path) and e.value.line is None
    assert str(e.value).startswith(f"{path}: {says}, not JSON or JSONL text") and "UTF-8" not in str(e.value)
    with pytest.raises(NotTextError, match=f"{says}, not YAML text"):
        read_yaml(path)
    with pytest.raises(NotTextError, match=f"{says}, not JSON text"):
        read_json(path)
    with pytest.raises(NotTextError, match=f"<stdin>: {says}, not text"):
        decode_text(path.read_bytes(), "<stdin>")


def test_gzip_says_to_decompress(tmp_path):
    with pytest.raises(TunelabError, match=r"a gzip file, not JSON or JSONL text \(decompress it first\)$"):
        list(iter_records(gzip_file(tmp_path / "d.jsonl.gz")))


def test_text_that_starts_like_a_magic_number_stays_text(tmp_path):
    path = tmp_path / "par.txt"
    path.write_text("PAR1 is the first paragraph\nPK is a name\n", encoding="utf-8")
    assert decode_text(path.read_bytes(), path).startswith("PAR1 is")
    bad = tmp_path / "gbk.jsonl"
    bad.write_bytes(json.dumps({"problem": "你好"}, ensure_ascii=False).encode("gbk"))
    with pytest.raises(TunelabError, match="not UTF-8 text") as e:
        list(iter_records(bad))
    assert not isinstance(e.value, NotTextError)


def test_every_verb_reading_records_says_it_in_one_line(tmp_path, capsys):
    """The training-data reader and a CLI verb over it: one line, exit 2, the file and its kind named."""
    db = sqlite_file(tmp_path / "votes.db")
    with pytest.raises(NotTextError, match="a SQLite database"):
        read_examples(db)
    assert main(["data", "convert", str(parquet_file(tmp_path / "d.parquet")), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert err == f"tunelab: error: {tmp_path / 'd.parquet'}: a Parquet file, not JSON or JSONL text\n"
    assert not (tmp_path / "o.json").exists()


def test_an_empty_zip_is_a_zip(tmp_path):
    buf = io.BytesIO()
    zipfile.ZipFile(buf, "w").close()
    with pytest.raises(NotTextError, match="a zip archive"):
        decode_text(buf.getvalue(), "empty.zip")
