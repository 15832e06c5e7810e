"""Where a LoRA adapter's base model is, recorded so that a run directory loads from anywhere.

peft writes the base into `adapter_config.json` (`base_model_name_or_path`) as it was given, and a recipe
gives a local base as typed: `models/tiny-base`, relative to the directory `tunelab` ran in. Loaded from
anywhere else, that name reads as a hub id, and `from_pretrained` spent a minute retrying the hub before
blaming the network. So, when a checkpoint is written, `record_base_model` stores a local base absolute in
`adapter_config.json` (plain peft on this machine then loads the adapter) and writes both that absolute path
and the path relative to the adapter into `base_model.json` beside it: a run moved or copied together with
its base (`runs/` and `models/` side by side) still finds it; a base tunelab converted into its cache (a GGUF, a
MindFormers checkpoint) is also recorded by its place there, so a cache moved or set anew (`TUNELAB_CACHE`) that
holds the same conversion still serves it. `resolve_base_model` tries those in turn.

A base that is a hub id stays one. Loading it needs the hub (or the local cache); `hub_unreachable` says at
once when neither is there, instead of the minute of retries.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from tunelab.errors import TunelabError

ADAPTER_CONFIG = "adapter_config.json"
BASE_RECORD = "base_model.json"
_TRUE = ("1", "ON", "YES", "TRUE")  # what huggingface_hub reads as set
_CONNECT_SECONDS = 3.0


def looks_like_hub_id(path: str) -> bool:
    """`org/name` that is not a path here: what `from_pretrained` would fetch from the hub."""
    return not Path(path).exists() and path.count("/") == 1 and not path.startswith((".", "/", "~"))


def record_base_model(adapter_dir: Path, base: str | None) -> None:
    """Record the base of the adapter just saved in `adapter_dir` (see the module docstring). `base` is the
    peft config's `base_model_name_or_path`: None for a model built from scratch, which has no base on disk.
    The relative path is taken from `adapter_dir` as written; a checkpoint's staging directory
    (`step-N.tmp/adapter`) is as deep as its final place (`step-N/adapter`), so it holds there too."""
    if not base:
        return
    adapter_dir = Path(adapter_dir)
    local = Path(base).expanduser()
    if not local.exists():
        _write_json(adapter_dir / BASE_RECORD, {"hub_id": base})
        return
    absolute = os.path.abspath(local)
    try:
        relative = os.path.relpath(local.resolve(), adapter_dir.resolve())
    except ValueError:  # another drive (Windows): there is no relative path
        relative = None
    config_path = adapter_dir / ADAPTER_CONFIG
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = absolute
    _write_json(config_path, config)
    record = {"absolute": absolute, "relative": relative}
    cached = _in_cache(local)
    if cached:
        record["cache"] = cached
    _write_json(adapter_dir / BASE_RECORD, record)


def _in_cache(base: Path) -> str | None:
    """The base's path inside tunelab's cache (a converted GGUF or MindFormers checkpoint, named by its source's
    key), or None when it lies elsewhere: a cache moved or set anew (`TUNELAB_CACHE`) still holds it there."""
    from tunelab.records import cache_root
    base, root = base.resolve(), cache_root().resolve()
    return base.relative_to(root).as_posix() if base.is_relative_to(root) else None


def _write_json(path: Path, obj: dict) -> None:
    """As peft writes adapter_config.json (indented, sorted keys)."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def resolve_base_model(adapter_dir: str | Path) -> str:
    """The base to load the adapter in `adapter_dir` onto: the first that exists of `base_model_name_or_path`,
    the recorded path relative to the adapter and the recorded absolute path; else a hub id. The record counts
    while adapter_config.json still names what it recorded (an edited `base_model_name_or_path` wins). A base
    recorded as local that is nowhere is "model path not found", never a hub attempt; an adapter without a
    record (older runs, plain peft) names a hub id as `org/name`."""
    from tunelab.records import read_json_object
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    named = read_json_object(config_path).get("base_model_name_or_path")
    if not named or not isinstance(named, str):
        raise TunelabError("adapter has no base_model_name_or_path", file=config_path,
                           field="base_model_name_or_path")
    record = read_json_object(adapter_dir / BASE_RECORD) if (adapter_dir / BASE_RECORD).is_file() else {}
    ours = named in (record.get("absolute"), record.get("hub_id"))
    candidates = [Path(named).expanduser()]
    if ours and isinstance(record.get("relative"), str):
        candidates.append(Path(os.path.normpath(adapter_dir.resolve() / record["relative"])))
    if ours and isinstance(record.get("absolute"), str):
        candidates.append(Path(record["absolute"]))
    if ours and isinstance(record.get("cache"), str):  # a converted base, in the cache as it is set now
        from tunelab.records import cache_root
        candidates.append(cache_root() / record["cache"])
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate)
    if looks_like_hub_id(named) and not (ours and "absolute" in record):
        return named
    tried = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise TunelabError(f"the adapter's base: model path not found (looked for {tried}); copy the base to one "
                       "of those places, or point base_model_name_or_path at it", file=config_path,
                       field="base_model_name_or_path")


def hub_unreachable(repo_id: str) -> str | None:
    """Why `repo_id` cannot be loaded from the hub right now, or None when it can (or might). A copy in the
    local cache loads (its config.json or, for a tokenizer alone, tokenizer_config.json); else HF_HUB_OFFLINE /
    TRANSFORMERS_OFFLINE, or no TCP connection to the hub endpoint's host and port (its proxy's, when one is
    set) within 3 s, means it cannot."""
    from huggingface_hub import constants, try_to_load_from_cache
    if any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in ("config.json", "tokenizer_config.json")):
        return None
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").upper() in _TRUE:
            return f"{name}={os.environ[name]} is set"
    endpoint = urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    proxy = getproxies().get(endpoint.scheme or "https")
    via = urlsplit(proxy) if proxy and not proxy_bypass(host) else endpoint
    address = (via.hostname or host, via.port or (80 if via.scheme == "http" else 443))
    if not _connects(address):
        return f"{address[0]}:{address[1]} cannot be reached"
    return None


def _connects(address: tuple[str, int]) -> bool:
    """Whether a TCP connection to `address` opens within the time limit. The attempt runs on a daemon
    thread, so a name lookup that hangs (which the socket timeout does not bound) is abandoned too."""
    result = []

    def attempt() -> None:
        try:
            socket.create_connection(address, timeout=_CONNECT_SECONDS).close()
            result.append(True)
        except OSError:
            result.append(False)
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(_CONNECT_SECONDS)
    return bool(result and result[0])
