"""A run's files carry a `format_version`; one function brings an older file forward, a newer one is refused."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.run_format import FORMAT_VERSION, migrate, stamped
from tunelab.train.trainer_state import LogWindow, rank_window


def test_a_version_1_trainer_state_reads_as_today():
    old = {"step": 7, "log_window": (3.0, 2.0, 40.0), "loss_window": {"sums": {"a": 1.0}, "pairs": 2}}
    new = migrate(old, "trainer_state")
    assert new["format_version"] == FORMAT_VERSION and "format_version" not in old  # the file's dict untouched
    assert LogWindow.from_saved(new["log_window"]) == LogWindow(3.0, 2.0, 40.0, 40.0)  # sample tokens were tokens
    assert rank_window(new, 0) == {"sums": {"a": 1.0}, "pairs": 2} and rank_window(new, 1) is None


def test_todays_file_is_read_as_it_is():
    state = stamped({"step": 3, "log_window": (1.0, 1.0, 2.0, 2.0), "loss_window": [None, None]})
    assert migrate(state, "trainer_state") == state


def test_a_file_from_a_newer_tunelab_is_refused_in_one_line(tmp_path):
    with pytest.raises(TunelabError) as e:
        migrate({"format_version": FORMAT_VERSION + 1, "step": 1}, "trainer_state", tmp_path / "trainer_state.pt")
    assert e.value.field == "format_version" and "trainer_state.pt" in str(e.value) and "\n" not in str(e.value)
