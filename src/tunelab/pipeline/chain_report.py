"""How a chain's stages read in its last stage's report (`tunelab.pipeline.chain` runs them): one summary line a
stage, and the Stages section — each stage's gain with its interval and its cost on every ability. Only formatting
of metrics.json's `chain`, so that every run kind's report can show it (`run_kind.RunKind.write_report`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def chain_choice(chain: list[dict]) -> dict | None:
    """The stage whose model the chain recommends: the most accurate of those that keep every ability (retention
    PASS), the later on a tie; None when no stage has both an accuracy and a PASS. Not always the last stage: a
    stage that gains nothing and loses an ability leaves the one before it the chain's best model."""
    kept = [s for s in chain if s.get("accuracy") is not None and (s.get("retention") or {}).get("verdict") == "PASS"]
    return max(reversed(kept), key=lambda s: s["accuracy"]) if kept else None


def chain_model_elsewhere(run_dir: Path) -> dict | None:
    """The chain's model (`chain_choice`) when `run_dir` is a chain's last stage (only its metrics.json holds the
    chain) and that model is an earlier stage; None otherwise (not a chain, not evaluated, a `chain` that is not a
    list of stages, or the last stage is the model)."""
    from tunelab.records import read_json_object
    metrics = run_dir / "metrics.json"
    chain = read_json_object(metrics).get("chain") if metrics.is_file() else None
    if not chain or not isinstance(chain, list) or not all(isinstance(s, dict) for s in chain):
        return None
    chosen = chain_choice(chain)
    return None if chosen is None or chosen is chain[-1] else chosen


def chain_choice_line(chain: list[dict]) -> str | None:
    """The summary's verdict on the chain, when its last stage is not the model to take (`chain_choice`)."""
    from tunelab.report import pct
    best, last = chain_choice(chain), chain[-1] if chain else None
    if last is None or best is last or (last.get("retention") or {}).get("verdict") is None:
        return None
    if best is None:
        return "the chain's model: none of its stages keeps every ability"
    lost = ", ".join(s["stage"] for s in chain[chain.index(best) + 1:]
                     if (s.get("retention") or {}).get("verdict") == "FAIL")
    why = f"the stages after it lost an ability ({lost})" if lost else "the stages after it were less accurate"
    return (f"the chain's model: stage {best['stage']}'s {best['best_checkpoint']} ({best['run_dir']}), "
            f"{pct(best['accuracy'])} with every ability kept; {why}")


def chain_summary_lines(chain: list[dict]) -> list[str]:
    """One line a stage for the summary: `stage sft (sft): 1.5% -> 77.0% (+75.5, interval ...), retention PASS`;
    then, when the last stage is not the chain's best model, which stage is (`chain_choice_line`)."""
    from tunelab.report import pct
    lines = []
    for s in chain:
        line = f"stage {s['stage']} ({s['method']})"
        if s.get("accuracy") is not None:
            start = f"{pct(s['start_accuracy'])} -> " if s.get("start_accuracy") is not None else ""
            line += f": {start}{pct(s['accuracy'])}"
            if s.get("change"):
                c = s["change"]
                line += (f" ({100 * c['change']:+.1f} points, 95 % interval {100 * c['interval'][0]:+.1f} to "
                         f"{100 * c['interval'][1]:+.1f}, n={c['n']})")
            if (s.get("retention") or {}).get("verdict"):
                line += f", retention {s['retention']['verdict']}"
        if s.get("wall_seconds") is not None:
            line += f", {s['wall_seconds'] / 60:.1f} min"
        lines.append(line)
    verdict = chain_choice_line(chain)
    return lines + ([verdict] if verdict else [])


def chain_report_lines(chain: list[dict]) -> list[str]:
    """The report's "Stages" section: each stage's gain with its interval and its cost on every ability."""
    from tunelab.report import pct
    lines = ["## Stages", "",
             "Each stage a run of its own (its report in its directory), each starting from the best checkpoint "
             "of the one before; the last is this run. Accuracy: the stage's start and its best checkpoint on the "
             "same held-out items, the change paired with its 95 % interval; every ability against the original "
             "base.", "",
             "| stage | method | steps | wall time | start | best | change (95 % interval) | retention | score |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in chain:
        change = s.get("change")
        interval = (f"{100 * change['change']:+.1f} ({100 * change['interval'][0]:+.1f} to "
                    f"{100 * change['interval'][1]:+.1f}), n={change['n']}" if change else "–")
        wall = f"{s['wall_seconds'] / 60:.1f} min" if s.get("wall_seconds") is not None else "–"
        start = pct(s["start_accuracy"]) if s.get("start_accuracy") is not None else "–"
        best = f"{pct(s['accuracy'])} ({s['best_checkpoint']})" if s.get("accuracy") is not None else "–"
        kept = (s.get("retention") or {}).get("verdict") or "–"
        score = f"{s['score']:.4f}" if s.get("score") is not None else "–"
        lines.append(f"| {s['stage']} | {s['method']} | {s.get('steps') or '–'} | {wall} | {start} | {best} | "
                     f"{interval} | {kept} | {score} |")
    keys = list(dict.fromkeys(k for s in chain for k in ((s.get("retention") or {}).get("entries") or {})))
    if keys:
        lines += ["", "| ability (original base) | base | " + " | ".join(s["stage"] for s in chain) + " |",
                  "|---|---|" + "---|" * len(chain)]
        for key in keys:
            entries = [((s.get("retention") or {}).get("entries") or {}).get(key) for s in chain]
            base = next((e["base"] for e in entries if e), None)
            cells = [("–" if e is None else f"{e['tuned']:.2f}" + (
                f" ({100 * e['retained']:.0f} %, {'PASS' if e['pass'] else 'FAIL'})"
                if e.get("retained") is not None else "")) for e in entries]
            lines.append(f"| {key} | {base:.2f} | " + " | ".join(cells) + " |")
    total = sum(s["wall_seconds"] for s in chain if s.get("wall_seconds") is not None)
    lines += ["", f"The chain's wall time: {total / 60:.1f} min (each stage's preparation, training and "
                  "evaluation; a resumed stage counts its last part)." if total else "", ""]
    return lines
