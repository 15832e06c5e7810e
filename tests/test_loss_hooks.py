"""What a loss module offers the loop besides its forward is declared (`methods/base.py`'s `KeepsWindow` and
`ReportsMetrics`), and the loop asks by isinstance: each method's loss module is what it declares."""

from __future__ import annotations

from tunelab.train.methods.base import KeepsWindow, ReportsMetrics


def test_each_loss_module_offers_the_hooks_the_loop_asks_for():
    from tunelab.train.methods.distill_loss import DistilledLoss
    from tunelab.train.methods.dpo_loss import PreferenceLossModel
    from tunelab.train.methods.grpo import GRPOLossModel
    from tunelab.train.methods.rft import RFTLossModel
    from tunelab.train.methods.sft_loss import LabelledLoss
    for cls in (PreferenceLossModel, GRPOLossModel, RFTLossModel, DistilledLoss):
        assert issubclass(cls, KeepsWindow) and issubclass(cls, ReportsMetrics), cls
    assert not issubclass(LabelledLoss, KeepsWindow) and not issubclass(LabelledLoss, ReportsMetrics)


def test_a_half_kept_window_is_not_a_window():
    class OnlySaves:
        def window(self) -> dict:
            return {}
    assert not isinstance(OnlySaves(), KeepsWindow)   # resume would have nowhere to give it back
