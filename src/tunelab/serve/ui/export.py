"""The Runs tab's Export and Hand-in buttons: `tunelab export --format gguf` and `tunelab handin` on the opened run,
run as the commands themselves (so the page writes exactly what the terminal would, and refuses what it refuses,
in the same one line), their results offered for download.

They write into the runs directory, nowhere else: `<runs>/exports/<run>-<quant>/` (the .gguf and its Ollama
Modelfile) and `<runs>/handin/<run>/` (the bundle, and `<run>.zip` of it to download). Like Start and Stop they
need the login on a page served beyond localhost.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.serve.ui.places import Places

EXPORTS, HANDINS = "exports", "handin"
KINDS = ("gguf", "handin")


def export_paths(places: Places) -> list[str]:
    """The folders whose files the page offers for download (Gradio serves nothing else of the runs directory)."""
    return [str(places.runs / EXPORTS), str(places.runs / HANDINS)]


def export_run(places: Places, run: str, kind: str, quant: str = "f16") -> tuple[str, list[str]]:
    """Export (`gguf`, with the quant type) or hand in (`handin`) the run `run` of the runs directory: (what the
    command printed, or its error line; the files to download). Refused without the login beyond localhost,
    and for a run outside the runs directory."""
    places.check_action()
    if kind not in KINDS:
        raise TunelabError(f"unknown export '{kind}' (one of: {', '.join(KINDS)})")
    run_dir = places.confine(places.runs / run)
    if not (run_dir / "recipe.yaml").is_file():
        raise TunelabError("not a run directory (no recipe.yaml)", file=run)
    if kind == "gguf":
        out = places.runs / EXPORTS / f"{run_dir.name}-{quant}"
        command = ["export", places.shown(run_dir), places.shown(out), "--format", "gguf", "--quant", quant]
    else:
        out = places.runs / HANDINS / run_dir.name
        command = ["handin", places.shown(run_dir), "--out", places.shown(out)]
    out.parent.mkdir(parents=True, exist_ok=True)
    # paths inside the project relative to it (the command runs there): it prints them as a user's terminal would
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", *command], cwd=places.project, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return f"⚠️ {lines[-1] if lines else f'exit {done.returncode}'}", []
    if kind == "gguf":
        files = [*sorted(out.glob("*.gguf")), out / "Modelfile"]
    else:
        partial = Path(shutil.make_archive(str(out.parent / f".{out.name}.partial"), "zip", root_dir=out))
        files = [partial.replace(out.parent / f"{out.name}.zip")]   # a zip cut short never takes the name
    # every line the command printed: a quantised type without llama.cpp's quantiser says what to run next
    return "  \n".join(done.stdout.strip().splitlines()), [str(f) for f in files if f.is_file()]
