"""A sweep's worker process: `python -m tunelab.sweep.worker SETTINGS_JSON`, started by `tunelab.sweep` (one per
device, or several on the CPU). It opens the coordinator's study and runs trials until the sweep has enough;
a user error ends it with one line and the error's exit status, as the CLI would."""

from __future__ import annotations

import json
import logging
import os
import sys

from tunelab.errors import TunelabError


def main(argv: list[str]) -> int:
    from tunelab.sweep import SweepSettings, prepare, work
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = SweepSettings(**json.loads(argv[0]))
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    logging.getLogger("tunelab.sweep").info("worker %d, PID %d%s", settings.worker_index, os.getpid(),
                                            f", GPU {gpu}" if settings.devices else "")
    try:
        work(settings, prepare(settings), settings.worker_index)
    except TunelabError as e:
        print(f"tunelab: {e.kind}: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
