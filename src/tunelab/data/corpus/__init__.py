"""The pretraining corpus, in the order text goes through it: `read` (streaming JSONL/TXT/wiki dumps, shards,
compressed files), `clean` (the cleaning rules), `sentences` (splitting Chinese and English text), `encode`
(the fast byte-level BPE encoder), `store` (the on-disk form: memory-mapped token blocks and their manifest), and
`prepare` (`tunelab data corpus`: read → clean → encode → store, `--verify`, `--show`)."""
