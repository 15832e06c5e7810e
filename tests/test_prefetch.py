"""The next step's batches are collated a step ahead on an accelerator (on a worker thread), the same batches the
step would have built; on the CPU, where the host is the device, in place."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from tunelab.data.packing import Row, collate
from tunelab.train.step import Prefetch, _collated


def _run(device: str):
    asked = []

    class Stream:
        def rows(self, start, count):
            asked.append(start)
            return [Row(input_ids=[start + i, 7, 8], labels=[-100, 7, 8], position_ids=[0, 1, 2])
                    for i in range(count)]
    method = SimpleNamespace(collate=lambda rows, pad, packed, flat: collate(rows, pad, packed, flat))
    run = SimpleNamespace(recipe=SimpleNamespace(train=SimpleNamespace(batch_size=2),
                                                 data=SimpleNamespace(packing=True)),
                          dist=SimpleNamespace(rank=0, world=1, device=torch.device(device)), method=method,
                          rows=SimpleNamespace(stream=Stream()), passes=1, rows_per_step=4, total_steps=3,
                          tokenizer=SimpleNamespace(pad_token_id=0), trained=SimpleNamespace(flat=False))
    return run, asked


def _same(a, b):
    assert len(a[0]) == len(b[0]) and a[1:] == b[1:]
    for x, y in zip(a[0], b[0]):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_an_accelerator_gets_the_next_steps_batches_collated_ahead():
    run, asked = _run("meta")
    ahead = Prefetch()
    _same(ahead.take(run, 0), _collated(run, 0))
    assert ahead._ahead is not None and ahead._ahead[1] == 1     # step 1 is being collated while step 0 trains
    _same(ahead.take(run, 1), _collated(run, 1))
    _same(ahead.take(run, 2), _collated(run, 2))
    assert ahead._ahead is None                                  # nothing past the last step
    other, _ = _run("meta")
    ahead.take(run, 0)
    _same(ahead.take(other, 1), _collated(other, 1))             # another run's batches are never handed over
    ahead.drop()
    assert ahead._ahead is None


def test_the_cpu_collates_in_place():
    run, asked = _run("cpu")
    ahead = Prefetch()
    for step in range(3):
        _same(ahead.take(run, step), _collated(run, step))
        assert ahead._ahead is None
    assert asked == [0, 0, 4, 4, 8, 8]                           # each step's rows asked for when it runs


def test_close_ends_the_worker_and_forgets_what_was_collated_ahead():
    run, _ = _run("meta")
    ahead = Prefetch()
    ahead.take(run, 0)
    pool = ahead._pool
    assert pool is not None and ahead._ahead is not None
    ahead.close()
    assert ahead._pool is None and ahead._ahead is None and pool._shutdown
    ahead.close()                                                # idempotent


def test_each_run_of_the_loop_has_its_own_prefetch_closed_when_it_ends(make_recipe, monkeypatch):
    """Two runs in one process share nothing collated: the loop makes a `Prefetch` per run, hands it to every
    step, and closes it when its steps end; `ONEDNN_PRIMITIVE_CACHE_CAPACITY` is set only while a run trains."""
    import os

    import tunelab.train.loop as loop
    import tunelab.train.step as step
    from tunelab.recipe import load_recipe
    made, given = [], []

    class Recorded(Prefetch):
        def __init__(self):
            super().__init__()
            self.closed = False
            made.append(self)

        def close(self):
            self.closed = True
            super().close()
    real_step = step.train_step

    def recorded_step(run, train_model, progress, n, prefetch):
        given.append((prefetch, os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY")))
        return real_step(run, train_model, progress, n, prefetch)
    monkeypatch.setattr(loop, "Prefetch", Recorded)
    monkeypatch.setattr(loop, "train_step", recorded_step)
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    for name in ("one", "two"):
        loop.train(load_recipe(make_recipe(name, data={"train": [{"generate": "arithmetic", "count": 32, "seed": 1}]},
                                           train={"max_steps": 2, "batch_size": 2, "num_checkpoints": 1})))
    assert len(made) == 2 and made[0] is not made[1] and all(p.closed for p in made)
    assert [p for p, _ in given] == [made[0], made[0], made[1], made[1]]
    assert {v for _, v in given} == {"64"} and "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
