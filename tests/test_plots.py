"""The run's PNG plots: a loss that is zero or negative (GRPO, DPO) is drawn, not dropped by a log scale."""

from __future__ import annotations

import json
import warnings

import pytest


@pytest.mark.parametrize("losses, scale", [([2.0, 1.0, 0.5], "log"), ([0.0, -0.02, 0.01], "linear")])
def test_the_loss_plot_uses_a_log_scale_only_for_positive_losses(tmp_path, monkeypatch, losses, scale):
    import matplotlib.pyplot as plt

    from tunelab.train import plots
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": i + 1, "loss": x, "lr": 1e-3}) + "\n"
                               for i, x in enumerate(losses)), encoding="utf-8")
    seen = {}

    def keep(fig, out):
        seen["scale"] = fig.axes[0].get_yscale()
        plt.close(fig)
        return out
    monkeypatch.setattr(plots, "save_figure", keep)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Data has no positive values, and therefore cannot be log-scaled"
        plots.plot_loss_curve(metrics, tmp_path / "loss.png")
    assert seen["scale"] == scale
