"""The pretraining corpus, in the order text goes through it: `read` (streaming JSONL/TXT/wiki dumps, shards,
compressed files), `clean` (the cleaning rules), `sentences` (splitting Chinese and English text), `encode`
(the fast byte-level BPE encoder), `packing` (sentences into blocks of tokens), `chunks` (read, clean and pack
chunk by chunk in worker processes; `kept` is what a chunk hands back), `store` (the on-disk form:
memory-mapped token blocks and their manifest), `prepare` (`tunelab data corpus`: a corpus directory and its
summary) and `verify` (`--verify`, `--show`: the blocks read back)."""
