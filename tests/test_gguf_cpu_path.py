"""docs/gguf.md's "One minute on a CPU", run exactly as written: its bash block's lines, in a directory that looks
like a clone's root (`models/` links to the repository's), each printing the answer its trailing `# comment` says.
`tunelab` lines run in-process through `tunelab.cli.main`; the `python -c` line (llama.cpp through
llama-cpp-python) runs in a subprocess of this interpreter, and is skipped, with the reason, where llama-cpp-python
is not installed."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cli import main

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## One minute on a CPU"


def cpu_path() -> list[tuple[list[str], str]]:
    """(argv, the answer its comment says) for each line of the section's bash block, in order."""
    text = (ROOT / "docs" / "gguf.md").read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```bash\n(.*?)^```", section, re.S | re.M).group(1)
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        command, *answer = re.split(r"\s+#\s+", line.strip(), maxsplit=1)  # bash: `#` after a blank, a comment
        if command:
            lines.append((shlex.split(command), answer[0].strip() if answer else ""))
    return lines


def test_the_section_is_a_short_tunelab_then_llama_cpp_path():
    steps = cpu_path()
    assert [argv[:2] for argv, _ in steps] == [["tunelab", "export"], ["tunelab", "generate"], ["python", "-c"]]
    assert steps[1][1] and steps[1][1] == steps[2][1]  # tunelab and llama.cpp: the same greedy answer


def test_the_cpu_path_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(ROOT / "models")
    for argv, answer in cpu_path():
        if argv[0] == "tunelab":
            assert main(argv[1:]) == 0, argv
            out = capsys.readouterr().out
        else:
            if importlib.util.find_spec("llama_cpp") is None:
                pytest.skip("llama-cpp-python is not installed (pip install 'tunelab[llama-cpp]'): the tunelab "
                            "steps ran, the llama.cpp step is skipped")
            done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, done.stderr
            out = done.stdout
        if answer:
            assert out.strip().splitlines()[-1] == answer, (argv, out)
    assert (tmp_path / "tiny-gguf" / "tiny-base-F16.gguf").is_file()
    assert (tmp_path / "tiny-gguf" / "Modelfile").is_file()
