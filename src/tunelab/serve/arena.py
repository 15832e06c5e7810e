"""The arena's vote store: one SQLite table, one row per vote, with the prompt and both answers.

A vote is `left` (model_a better), `right` (model_b better), `tie` or `both_bad`. Only anonymous battles (the
voter did not know which model was which) count for the leaderboard; side-by-side votes with names shown are
stored with anonymous = 0.

A battle is counted once: each vote carries its battle's id, a unique index on it makes the database refuse a
second row, and the insert is one atomic `INSERT ... ON CONFLICT DO NOTHING` (so concurrent vote events, from
one browser or from several processes sharing the file, cannot both pass an "already voted?" check).

A vote may be a judge's (`tunelab judge --arena`): it names the judge in `judge`, and is kept apart from people's
votes — `votes()` and `count()` (the leaderboard's) return people's only unless a judge is named.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

VOTES = ("left", "right", "tie", "both_bad")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts        REAL    NOT NULL,
    model_a   TEXT    NOT NULL,
    model_b   TEXT    NOT NULL,
    vote      TEXT    NOT NULL CHECK (vote IN ('left', 'right', 'tie', 'both_bad')),
    prompt    TEXT    NOT NULL,
    answer_a  TEXT    NOT NULL,
    answer_b  TEXT    NOT NULL,
    anonymous INTEGER NOT NULL DEFAULT 1,
    session   TEXT,
    seconds_a REAL,
    seconds_b REAL
)
"""
_BATTLE_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS votes_battle ON votes (battle)"


class ArenaStore:
    """Thread-safe (one connection behind a lock); every write is committed at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock, self._db:
            self._db.execute(_SCHEMA)
            columns = {r["name"] for r in self._db.execute("PRAGMA table_info(votes)")}
            if "battle" not in columns:     # a store from before battles had ids: its votes keep NULL
                self._db.execute("ALTER TABLE votes ADD COLUMN battle TEXT")
            if "judge" not in columns:      # people's votes: NULL; a judge's: its name
                self._db.execute("ALTER TABLE votes ADD COLUMN judge TEXT")
            self._db.execute(_BATTLE_INDEX)

    def record(self, model_a: str, model_b: str, vote: str, prompt: str, answer_a: str, answer_b: str,
               anonymous: bool = True, session: str | None = None, seconds_a: float | None = None,
               seconds_b: float | None = None, battle: str | None = None, judge: str | None = None) -> int | None:
        """Store one vote (a person's, or the named `judge`'s); its row id, or None when `battle` already has a
        vote (nothing is stored)."""
        if vote not in VOTES:
            raise ValueError(f"vote must be one of {VOTES}, not {vote!r}")
        if model_a == model_b:
            raise ValueError("a battle needs two different models")
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT INTO votes (ts, model_a, model_b, vote, prompt, answer_a, answer_b, anonymous, session,"
                " seconds_a, seconds_b, battle, judge) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (battle) DO NOTHING",
                (time.time(), model_a, model_b, vote, prompt, answer_a, answer_b, int(anonymous), session,
                 seconds_a, seconds_b, battle, judge))
            return int(cur.lastrowid) if cur.rowcount == 1 else None

    @staticmethod
    def _where(anonymous_only: bool, judge: str | None) -> tuple[str, tuple]:
        """People's votes (judge IS NULL) unless `judge` names one; anonymous battles only when asked."""
        clauses, args = ["judge IS NULL" if judge is None else "judge = ?"], (() if judge is None else (judge,))
        if anonymous_only:
            clauses.append("anonymous = 1")
        return " WHERE " + " AND ".join(clauses), args

    def votes(self, anonymous_only: bool = True, judge: str | None = None) -> list[dict]:
        where, args = self._where(anonymous_only, judge)
        with self._lock:
            return [dict(r) for r in self._db.execute(f"SELECT * FROM votes{where} ORDER BY id", args).fetchall()]

    def count(self, anonymous_only: bool = True, judge: str | None = None) -> int:
        where, args = self._where(anonymous_only, judge)
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM votes{where}", args).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
