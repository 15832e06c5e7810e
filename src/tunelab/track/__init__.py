"""Experiment tracking: what a run logs to the dashboards people already use (TensorBoard, MLflow, Weights &
Biases, SwanLab), each through its own library.

`open_trackers(names, run_dir, run_name, params, resume)` gives one `Trackers` that fans every record out to the
trackers a recipe names (`report_to`). What they get is the same data tunelab writes to its own files, under one
naming scheme (`tunelab.track.names`): the resolved recipe and environment as hyperparameters; per step the
training loss, learning rate, gradient norm, tokens/s, MFU and memory; validation loss; per checkpoint every eval
task's metrics, the retention ratios and verdict, the low-parameter ratio and the score.

A tracker must never cost the run: one that fails mid-run (a server gone) is logged once and switched off,
and training goes on. A run resumed with `--resume` continues the same tracked run (its id is kept in the run
directory, `trackers.json`), not a new one.
"""

from tunelab.track.base import Tracker, Trackers, open_trackers

__all__ = ["Tracker", "Trackers", "open_trackers"]
