"""Runs that survive each other and damaged files: the run lock, checkpoint manifests with fallback on resume,
preemption by SIGTERM/SIGUSR1, full disks, and the divergence guard.

Real processes, real files and real signals: `tunelab` runs as a subprocess where another process or a signal
is part of the story, and files are damaged the way a full disk or a cut copy damages them (truncated, emptied).
"""

from __future__ import annotations

import errno
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import lora_sections, write_recipe
from test_resume_ddp import _env, _metrics

from tunelab.cli import main
from tunelab.recipe import load_recipe
from tunelab.runs import checkpoint_dir, list_checkpoints, step_of
from tunelab.train.divergence import DivergenceGuard
from tunelab.train.plots import read_metrics


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunelab.cli", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def _wait_for(predicate, proc: subprocess.Popen | None, log: Path | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: " + (log.read_text(errors="replace")[-2000:] if log else ""))
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _last_line(err: str) -> str:
    return err.replace("\r", "\n").strip().splitlines()[-1]


def _trainable(ckpt: Path) -> dict:
    return torch.load(ckpt / "trainer_state.pt", weights_only=False)["trainable"]


def _assert_same_run(run_dir: Path, ref_dir: Path) -> None:
    """Every metrics line, the checkpoint names and the last checkpoint's weights equal the reference run's."""
    got, want = _metrics(run_dir), _metrics(ref_dir)
    assert [g[0] for g in got] == [w[0] for w in want]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-6)
    assert [c.name for c in list_checkpoints(run_dir)] == [c.name for c in list_checkpoints(ref_dir)]
    a, b = _trainable(list_checkpoints(run_dir)[-1]), _trainable(list_checkpoints(ref_dir)[-1])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


# --- one writer per run ------------------------------------------------------------------------------------

def test_a_second_train_or_resume_of_a_run_being_written_is_refused(tmp_path, capsys):
    path = write_recipe(tmp_path, "busy", train={"max_steps": 100000, "num_checkpoints": 2000, "log_every": 1})
    run_dir = load_recipe(path).run_dir
    log = tmp_path / "first.log"
    first = _start(["train", str(path)], tmp_path, log)
    try:
        _wait_for(lambda: list_checkpoints(run_dir), first, log)
        for argv in (["train", str(path)], ["train", str(path), "--resume"], ["run", str(path), "--resume"]):
            before = _logged_steps(run_dir)
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "another tunelab process is writing this run" in err
            assert f"PID {first.pid}" in err and "tunelab train" in err
            assert _logged_steps(run_dir) >= before  # the first goes on, alone
        # a kill -9 leaves no stale lock: the run resumes at once
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    lines = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in lines] == list(range(1, len(lines) + 1))  # nothing logged twice
    assert main(["runs", "check", str(run_dir)]) == 0
    assert "no process is writing this run" in capsys.readouterr().out


def test_the_lock_is_taken_before_anything_is_written(tmp_path, capsys):
    """While another process holds the lock, a new run is refused before its directory even exists, and
    `runs check` names the writer."""
    path = write_recipe(tmp_path, "early", train={"max_steps": 2})
    run_dir = load_recipe(path).run_dir
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from tunelab.train.run_lock import run_lock
            with run_lock(Path({str(run_dir)!r})):
                print("held", flush=True)
                time.sleep(600)
        """)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", str(path)]) == 2
        assert f"PID {holder.pid}" in capsys.readouterr().err
        assert not run_dir.exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", str(path)]) == 0



def test_a_writer_waits_out_a_probe_of_its_lock(tmp_path):
    """`writer_of` (the web UI's state poll, `tunelab runs`) tests the lock by taking it for an instant; a run
    starting in that instant is not refused. A probe hammering the lock from another thread (another open file,
    so flock conflicts as across processes) never makes a writer fail."""
    import threading

    from tunelab.train.run_lock import run_lock, writer_of

    run_dir = tmp_path / "probed"
    done = threading.Event()

    def probe():
        while not done.is_set():
            writer_of(run_dir)

    with run_lock(run_dir):  # the lock file exists, as after any run
        pass
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        for _ in range(200):
            with run_lock(run_dir):
                pass
    finally:
        done.set()
        prober.join()

# --- checkpoints that prove they are whole ------------------------------------------------------------------

def test_checkpoints_are_ordered_by_step_past_999999(tmp_path):
    for step in (999_999, 1_000_000, 20):
        ckpt = checkpoint_dir(tmp_path, step)
        ckpt.mkdir(parents=True)
        (ckpt / "state.json").write_text("{}")
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-000020", "step-999999", "step-1000000"]
    assert [step_of(c) for c in list_checkpoints(tmp_path)] == [20, 999_999, 1_000_000]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGE = {
    "truncated trainer_state.pt": lambda c: _truncate(c / "trainer_state.pt"),
    "empty state.json": lambda c: (c / "state.json").write_text(""),
    "truncated adapter": lambda c: _truncate(c / "adapter" / "adapter_model.safetensors", 0.9),
    "flipped byte in the adapter": lambda c: _flip(c / "adapter" / "adapter_model.safetensors"),
    # a checkpoint written before manifests: only loading can tell
    "no manifest, truncated trainer_state.pt": lambda c: ((c / "manifest.json").unlink(),
                                                          _truncate(c / "trainer_state.pt")),
}


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def undamaged(tiny_base, tmp_path_factory):
    """(recipe file, a copy of its finished run): the run each damage test damages, trained once for the module."""
    from tunelab.train.loop import train
    path = write_recipe(tmp_path_factory.mktemp("dmg"), "dmg",
                        **lora_sections(tiny_base, max_steps=12, num_checkpoints=4, log_every=5))
    recipe = load_recipe(path)
    train(recipe)
    ref = path.parent / "ref"
    shutil.copytree(recipe.run_dir, ref)
    return path, ref


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_sets_a_damaged_newest_checkpoint_aside_and_ends_equal(damage, undamaged, capsys):
    path, ref = undamaged
    recipe = load_recipe(path)
    shutil.rmtree(recipe.run_dir)  # the run as training left it, where its recipe says (the previous test's resumed)
    shutil.copytree(ref, recipe.run_dir)
    newest = list_checkpoints(recipe.run_dir)[-1]
    DAMAGE[damage](newest)
    (recipe.run_dir / "train_summary.json").unlink()  # as if killed before the summary

    if damage != "no manifest, truncated trainer_state.pt":  # found without loading anything
        assert main(["runs", "check", str(recipe.run_dir)]) == 1
        out = capsys.readouterr().out
        assert "step-000012  damaged" in out and "step-000009  whole" in out
    capsys.readouterr()
    assert main(["train", str(path), "--resume"]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.replace("\r", "\n").splitlines() if "damaged" in line]
    assert len(warned) == 1 and "step-000012" in warned[0] and "step-000012.damaged" in warned[0]
    assert (recipe.run_dir / "checkpoints" / "step-000012.damaged").is_dir()  # moved aside, never deleted
    summary = json.loads((recipe.run_dir / "train_summary.json").read_text())
    assert summary["resumed_from"] == 9
    _assert_same_run(recipe.run_dir, ref)
    assert (recipe.run_dir / "checkpoints" / "step-000012" / "adapter" / "adapter_model.safetensors").read_bytes() \
        == (ref / "checkpoints" / "step-000012" / "adapter" / "adapter_model.safetensors").read_bytes()


def test_a_damaged_best_checkpoint_is_one_line_never_another_checkpoint(tmp_path, tiny_base, capsys):
    """`export` of a run whose best checkpoint is damaged must not quietly export another one."""
    from tunelab.train.loop import train
    path = write_recipe(tmp_path, "best", **lora_sections(tiny_base, max_steps=4, num_checkpoints=2))
    recipe = load_recipe(path)
    train(recipe)
    (recipe.run_dir / "metrics.json").write_text(json.dumps({"best_checkpoint": "step-000002"}))
    _truncate(recipe.run_dir / "checkpoints" / "step-000002" / "adapter" / "adapter_model.safetensors")
    capsys.readouterr()
    for argv in (["export", str(recipe.run_dir), str(tmp_path / "out")],
                 ["export", str(recipe.run_dir / "checkpoints" / "step-000002"), str(tmp_path / "out")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "damaged checkpoint" in err and "adapter_model.safetensors: truncated" in err
        assert "step-000002" in err
    assert not (tmp_path / "out").exists()
    # nor the last: `--checkpoint last` with the newest damaged names it instead of exporting an older one
    _truncate(recipe.run_dir / "checkpoints" / "step-000004" / "trainer_state.pt")
    assert main(["export", str(recipe.run_dir), str(tmp_path / "out"), "--checkpoint", "last"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step-000004" in err and "trainer_state.pt: truncated" in err


# --- full disks ---------------------------------------------------------------------------------------------

# what each library raises when the disk is full (seen on a full tmpfs with torch 2.13, safetensors 0.8,
# transformers 5): injected at each write site of a checkpoint where no small file system can be mounted
def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _torch_full(*a, **k):
    try:
        raise RuntimeError("basic_ios::clear: iostream error")
    except RuntimeError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


def _safetensors_full(*a, **k):
    from safetensors import SafetensorError
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


SITES = {  # where, what it raises, what the error names
    "model weights": ("transformers.modeling_utils.safe_save_file", _safetensors_full, "model"),
    "tokenizer": ("transformers.tokenization_utils_tokenizers.TokenizersBackend.save_pretrained", _enospc, "model"),
    "trainer state": ("torch.save", _torch_full, "trainer_state.pt"),
    "manifest": ("tunelab.train.checkpoints.write_manifest", _enospc, "manifest.json"),
}


@pytest.mark.parametrize("site", SITES)
def test_a_full_disk_at_each_write_site_is_one_line_and_loses_nothing(site, make_recipe, monkeypatch, capsys):
    """The second checkpoint's write fails at the site, as a full disk makes it fail there."""
    import importlib

    from tunelab.train import checkpoints
    target, fail, named = SITES[site]
    path = make_recipe("full", train={"max_steps": 6, "num_checkpoints": 3})
    run_dir = load_recipe(path).run_dir
    written = []
    real_write_files = checkpoints._write_files
    monkeypatch.setattr(checkpoints, "_write_files", lambda tmp, *a, **k: (written.append(tmp),
                                                                           real_write_files(tmp, *a, **k))[1])
    module, _, attr = target.rpartition(".")
    try:
        owner = importlib.import_module(module)
    except ImportError:  # a class attribute
        module, _, cls = module.rpartition(".")
        owner = getattr(importlib.import_module(module), cls)
    real = getattr(owner, attr)
    monkeypatch.setattr(owner, attr, lambda *a, **k: fail() if len(written) == 2 else real(*a, **k))
    assert main(["train", str(path)]) == 2
    err = _last_line(capsys.readouterr().err)
    assert err.startswith("tunelab: error:") and "could not write checkpoints/step-000004.tmp" in err, err
    assert named in err and "free on that disk" in err and "step-000002 is whole" in err
    assert "continue with: tunelab train" in err and err.endswith("--resume")
    assert [c.name for c in (run_dir / "checkpoints").iterdir()] == ["step-000002"]  # the .tmp is removed
    monkeypatch.undo()
    assert main(["train", str(path), "--resume"]) == 0
    assert [c.name for c in list_checkpoints(run_dir)] == ["step-000002", "step-000004", "step-000006"]


FULL_DISK_SCRIPT = """
set -u
mount -t tmpfs -o size={size}k tunelab-test "$MNT" || exit 99
"$PY" -m tunelab.cli train "$RECIPE" > "$OUT/first.out" 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"
ls -a "$MNT/runs/full/checkpoints" > "$OUT/after-first.txt"
mount -o remount,size=100m "$MNT"
"$PY" -m tunelab.cli train "$RECIPE" --resume > "$OUT/second.out" 2> "$OUT/second.err"; echo $? > "$OUT/second.rc"
cp -r "$MNT/runs" "$OUT/runs"
"""


def test_a_real_full_disk_then_resume_ends_equal(tmp_path, capsys):
    """A small tmpfs (in a user and mount namespace, where the kernel allows one) fills during a checkpoint:
    one line, the partial checkpoint removed, and after space is freed the run resumes to equal an unbroken one."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("no user+mount namespaces here to mount a small tmpfs (the injected ENOSPC tests still ran)")
    from tunelab.train.loop import train
    sections = {"train": {"max_steps": 9, "num_checkpoints": 3, "log_every": 2}}
    ref = load_recipe(write_recipe(tmp_path / "ref", "full", **sections))
    train(ref)
    sizes = sorted(sum(f.stat().st_size for f in c.rglob("*") if f.is_file()) for c in list_checkpoints(ref.run_dir))
    run_bytes = sum(f.stat().st_size for f in (ref.run_dir).rglob("*") if f.is_file()
                    and "checkpoints" not in f.parts)
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    path = write_recipe(tmp_path / "disk", "full", **sections)
    raw = path.read_text().replace(str(tmp_path / "disk" / "runs"), str(mnt / "runs"))
    path.write_text(raw)
    size_k = (run_bytes + sizes[0] + sizes[1] // 2) // 1024 + 64  # room for one checkpoint and half the next
    env = {**_env(), "MNT": str(mnt), "OUT": str(out), "RECIPE": str(path), "PY": sys.executable}
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", FULL_DISK_SCRIPT.format(size=size_k)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if proc.returncode == 99:
        pytest.skip(f"tmpfs cannot be mounted here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    first_err = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "2", first_err[-2000:]
    last = _last_line(first_err)
    # torch.save says only that its write failed (module text above): the free space says why
    assert last.startswith("tunelab: error:") and ("No space left on device" in last or "the write failed" in last)
    free = last.split(" free on that disk")[0].rsplit("(", 1)[1]
    assert free.endswith("bytes") or float(free.split()[0]) < 64 and free.endswith("KiB"), last
    assert "step-000003 is whole" in last and "Traceback" not in first_err
    assert (out / "after-first.txt").read_text().split() == [".", "..", "step-000003"]
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.err").read_text()[-2000:]
    _assert_same_run(out / "runs" / "full", ref.run_dir)


# --- graceful preemption ------------------------------------------------------------------------------------

def _preempt_recipe(tmp_path: Path, tiny_base: Path, name: str, **train) -> Path:
    return write_recipe(tmp_path, name, **lora_sections(tiny_base, max_steps=60, num_checkpoints=3, log_every=7,
                                                        batch_size=2, **train))


@pytest.fixture(scope="module")
def unbroken(tiny_base, tmp_path_factory):
    """The reference: the preemption recipe run without interruption, once for the module."""
    from tunelab.train.loop import train
    recipe = load_recipe(_preempt_recipe(tmp_path_factory.mktemp("unbroken"), tiny_base, "pre"))
    train(recipe)
    return recipe.run_dir


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_mid_run_checkpoints_and_resumes_equal(sig, tmp_path, tiny_base, unbroken, capsys):
    path = _preempt_recipe(tmp_path, tiny_base, "pre")
    run_dir = load_recipe(path).run_dir
    log = tmp_path / "stopped.log"
    proc = _start(["train", str(path)], tmp_path, log)
    _wait_for(lambda: _logged_steps(run_dir) >= 3, proc, log)  # past step 21, before the checkpoint at 40?
    proc.send_signal(getattr(signal, sig))
    assert proc.wait(60) == 75
    last = _last_line(log.read_text())
    assert last.startswith(f"tunelab: stopped: {run_dir}: {sig} received: stopped after step")
    assert last.endswith(f"continue with: tunelab train {path} --resume")
    stopped_at = int(last.split("stopped after step ")[1].split()[0])
    assert f"step-{stopped_at:06d}" in last and (checkpoint_dir(run_dir, stopped_at) / "manifest.json").is_file()
    assert not (run_dir / "train_summary.json").exists()

    assert main(["train", str(path), "--resume"]) == 0
    assert json.loads((run_dir / "train_summary.json").read_text())["resumed_from"] == stopped_at
    _assert_same_run(run_dir, unbroken)  # the preemption checkpoint is gone: the same evenly spaced ones


def test_a_stop_signal_during_a_checkpoint_write_stops_right_after_it(tmp_path, tiny_base, unbroken):
    path = _preempt_recipe(tmp_path, tiny_base, "pre", save_merged=True)  # a slower write: merged model too
    run_dir = load_recipe(path).run_dir
    log = tmp_path / "stopped.log"
    proc = _start(["train", str(path)], tmp_path, log)
    _wait_for(lambda: (run_dir / "checkpoints" / "step-000020.tmp").exists(), proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 75
    last = _last_line(log.read_text())
    assert "stopped after step 20 of 60, checkpoint step-000020" in last
    assert [c.name for c in list_checkpoints(run_dir)] == ["step-000020"]  # the regular one: no extra
    assert main(["train", str(path), "--resume"]) == 0
    _assert_same_run(run_dir, unbroken)  # save_merged adds model/ to each checkpoint, and changes nothing else


def test_a_second_stop_signal_stops_at_once(tmp_path, tiny_base):
    path = _preempt_recipe(tmp_path, tiny_base, "twice", save_merged=True)
    run_dir = load_recipe(path).run_dir
    log = tmp_path / "twice.log"
    proc = _start(["train", str(path)], tmp_path, log)
    _wait_for(lambda: (run_dir / "checkpoints" / "step-000020.tmp").exists(), proc, log)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(60)
    assert rc in (-signal.SIGTERM, 75)  # 75 only if the whole checkpoint was written before the second came
    if rc == -signal.SIGTERM:
        assert all(c.name in ("step-000020", "step-000020.tmp") for c in (run_dir / "checkpoints").iterdir())


# --- divergence beyond NaN ----------------------------------------------------------------------------------

def test_a_frozen_loss_stops_the_run_and_names_the_last_good_checkpoint(tmp_path, tiny_base, capsys):
    """lr 1e5 saturates the network: the output is uniform (loss ln 1724 on models/tiny-base), the gradient
    exactly zero; without the guard the run trained to the end and reported success."""
    sections = lora_sections(tiny_base, max_steps=40, num_checkpoints=20, lr=1e5, warmup_ratio=0.0)
    path = write_recipe(tmp_path, "frozen", **sections)
    assert main(["train", str(path)]) == 2
    err = _last_line(capsys.readouterr().err)
    assert "with a zero gradient for 10 steps" in err and "train.divergence" in err and "train.lr" in err
    stopped = int(err.split("stopping at step ")[1].split(".")[0])
    run_dir = load_recipe(path).run_dir
    rows = read_metrics(run_dir / "metrics.jsonl")
    frozen_from = stopped - 9
    assert all(r["grad_norm"] == 0.0 for r in rows if r["step"] >= frozen_from)
    good = [c for c in list_checkpoints(run_dir) if step_of(c) < frozen_from]
    named = err.split("Last good checkpoint: ")[1].split(" (")[0]
    assert named == (str(good[-1]) if good else "none")

    # the off switch, and a guard setting may change on --resume (it does not define the run)
    path = write_recipe(tmp_path, "frozen-off", **{**sections, "train": {**sections["train"],
                                                                        "divergence": {"enabled": False}}})
    assert main(["train", str(path)]) == 0


def test_the_guard_ignores_noise_and_catches_a_lasting_spike():
    import random
    rng = random.Random(0)
    g = DivergenceGuard()
    # a run learning down to 0.01, with batches up to 5x their level: never a stop
    for step in range(2000):
        level = max(0.01, 4.0 * 0.99 ** step)
        assert g.update(level * rng.uniform(0.2, 5.0), rng.uniform(0.01, 2.0)) is None
    # a loss that jumps from ~0.01 to ~3 and stays: stopped after spike_steps steps
    reasons = [g.update(3.0 + rng.uniform(-0.1, 0.1), 5.0) for _ in range(10)]
    assert reasons[:9] == [None] * 9 and "diverging" in reasons[9]
    # a one-step spike is not a divergence
    g = DivergenceGuard()
    for _ in range(100):
        g.update(1.0, 1.0)
    assert g.update(50.0, 1.0) is None and g.update(1.0, 1.0) is None and g.spiking == 0
    # a zero gradient alone, with a moving loss, is not frozen; state round-trips
    g = DivergenceGuard(flat_steps=3)
    assert [g.update(x, 0.0) for x in (2.0, 1.9, 1.8, 1.7)] == [None] * 4
    h = DivergenceGuard(flat_steps=3)
    h.load(g.state())
    assert [h.update(1.7, 0.0) for _ in range(3)][-1] is not None
