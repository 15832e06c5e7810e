"""Leaderboard ratings from pairwise votes, honest at classroom scale (tens to a few hundred votes).

- Bradley-Terry: P(i beats j) = sigmoid(r_i - r_j), fitted by Newton's method on all votes at once, with a
  Gaussian prior on the ratings (L2 regularisation) so that a model with two lucky wins is not rated
  +infinity. Ties and "both bad" count as half a win each way. Shown on the Elo scale (400 / ln 10 per natural
  unit, mean 1000).
- Elo: the online update (K = 32, start 1000) in vote order; order-dependent, so it is shown beside
  Bradley-Terry, which is the ranking.
- Intervals (95 %): both are refitted on votes resampled with replacement (bootstrap percentiles). For
  Bradley-Terry the interval is the wider of that and the Laplace interval of the regularised fit
  (+-1.96 posterior sd from the inverse Hessian): the bootstrap alone collapses to a point when every vote
  went the same way, which is exactly when few votes say least. A model's rank is 1 + the number of models
  whose whole interval lies above its own, so models that the votes cannot tell apart share a rank.
- A model with fewer than `min_votes` votes is listed as "not enough votes" without a rank.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)
BASE = 1000.0


@dataclass
class Leaderboard:
    models: list[str]
    rows: list[dict]                     # one per model, best first
    winrate: dict[str, dict[str, tuple[float, int] | None]]
    total_votes: int
    min_votes: int
    message: str
    settings: dict = field(default_factory=dict)

    def table(self) -> list[list]:
        """Rows for a display table (see COLUMNS)."""
        out = []
        for r in self.rows:
            if r["enough_votes"]:
                out.append([r["rank"], r["model"], round(r["bt"]), f"{r['bt_low']:.0f} – {r['bt_high']:.0f}",
                            round(r["elo"]), f"{r['elo_low']:.0f} – {r['elo_high']:.0f}", r["votes"],
                            f"{r['wins']}/{r['ties']}/{r['losses']}", f"{r['win_rate']:.0%}"])
            else:
                out.append(["—", r["model"], "not enough votes", "", "", "", r["votes"],
                            f"{r['wins']}/{r['ties']}/{r['losses']}",
                            f"{r['win_rate']:.0%}" if r["votes"] else "—"])
        return out

    def matrix(self) -> list[list]:
        """Win-rate matrix for display: row model's share of points against the column model (n votes)."""
        out = []
        for a in self.models:
            row = [a]
            for b in self.models:
                cell = self.winrate[a][b]
                row.append("" if a == b else ("—" if cell is None else f"{cell[0]:.0%} (n={cell[1]})"))
            out.append(row)
        return out

    def to_csv(self) -> str:
        buf = io.StringIO()
        keys = ["rank", "model", "bt", "bt_low", "bt_high", "elo", "elo_low", "elo_high", "votes", "wins", "ties",
                "losses", "win_rate", "enough_votes"]
        w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()})
        return buf.getvalue()

    def to_json(self) -> str:
        return json.dumps({"total_votes": self.total_votes, "min_votes": self.min_votes, "message": self.message,
                           "settings": self.settings, "leaderboard": self.rows,
                           "win_rate": {a: {b: (None if c is None else {"rate": c[0], "n": c[1]})
                                            for b, c in row.items() if b != a}
                                        for a, row in self.winrate.items()}},
                          ensure_ascii=False, indent=2)


COLUMNS = ["rank 排名", "model 模型", "Bradley-Terry", "95% CI", "Elo", "Elo 95% CI", "votes 票数",
           "W/T/L 胜/平/负", "win rate 胜率"]


def _outcomes(votes: list[dict], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.array([index[v["model_a"]] for v in votes], dtype=int)
    b = np.array([index[v["model_b"]] for v in votes], dtype=int)
    s = np.array([{"left": 1.0, "right": 0.0}.get(v["vote"], 0.5) for v in votes])  # score of model_a
    return a, b, s


def bradley_terry(a: np.ndarray, b: np.ndarray, s: np.ndarray, m: int, reg: float,
                  with_sd: bool = False):
    """MAP ratings in natural units (mean 0) under a N(0, 1/reg) prior; Newton's method. With `with_sd`, also
    the posterior standard deviations of the centred ratings (Laplace approximation)."""
    r = np.zeros(m)
    hess = reg * np.eye(m)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(r[a] - r[b])))
        resid = s - p
        grad = np.bincount(a, resid, m) - np.bincount(b, resid, m) - reg * r
        w = p * (1 - p)
        hess = np.zeros((m, m))
        np.add.at(hess, (a, a), w)
        np.add.at(hess, (b, b), w)
        np.add.at(hess, (a, b), -w)
        np.add.at(hess, (b, a), -w)
        hess += reg * np.eye(m)
        step = np.linalg.solve(hess, grad)
        r += step
        if np.abs(step).max() < 1e-9:
            break
    if not with_sd:
        return r - r.mean()
    centre = np.eye(m) - 1.0 / m
    cov = centre @ np.linalg.inv(hess) @ centre.T
    return r - r.mean(), np.sqrt(np.clip(np.diag(cov), 0, None))


def elo(a: np.ndarray, b: np.ndarray, s: np.ndarray, m: int, k: float = 32.0) -> np.ndarray:
    r = np.full(m, BASE)
    for i, j, sc in zip(a, b, s):
        e = 1.0 / (1.0 + 10 ** ((r[j] - r[i]) / 400.0))
        r[i] += k * (sc - e)
        r[j] -= k * (sc - e)
    return r


def leaderboard(votes: list[dict], models: list[str] | None = None, min_votes: int = 10, reg: float = 0.5,
                rounds: int = 200, seed: int = 0, elo_k: float = 32.0) -> Leaderboard:
    """Ratings, intervals, counts and the win-rate matrix from votes ({model_a, model_b, vote})."""
    names = sorted({v["model_a"] for v in votes} | {v["model_b"] for v in votes} | set(models or []))
    index = {n: i for i, n in enumerate(names)}
    m = len(names)
    settings = {"regularisation": reg, "prior_sd_elo": ELO_SCALE / math.sqrt(reg), "bootstrap_rounds": rounds,
                "interval": "95%: wider of bootstrap percentiles and Laplace +-1.96 sd (Bradley-Terry)",
                "elo_k": elo_k, "min_votes": min_votes, "ties": "tie and both_bad count half a win each way"}
    winrate: dict[str, dict[str, tuple[float, int] | None]] = {x: {y: None for y in names} for x in names}
    if not votes or m < 2:
        msg = (f"No votes yet: every model needs {min_votes} votes before it is ranked. "
               f"还没有投票：每个模型至少需要 {min_votes} 票才会排名。")
        rows = [{"rank": None, "model": n, "bt": None, "bt_low": None, "bt_high": None, "elo": None,
                 "elo_low": None, "elo_high": None, "votes": 0, "wins": 0, "ties": 0, "losses": 0,
                 "win_rate": 0.0, "enough_votes": False} for n in names]
        return Leaderboard(names, rows, winrate, 0, min_votes, msg, settings)

    a, b, s = _outcomes(votes, index)
    bt_nat, bt_sd = bradley_terry(a, b, s, m, reg, with_sd=True)
    bt = bt_nat * ELO_SCALE + BASE
    el = elo(a, b, s, m, elo_k)
    rng = np.random.default_rng(seed)
    boot_bt, boot_elo = np.zeros((rounds, m)), np.zeros((rounds, m))
    for t in range(rounds):
        idx = rng.integers(0, len(s), len(s))
        boot_bt[t] = bradley_terry(a[idx], b[idx], s[idx], m, reg) * ELO_SCALE + BASE
        boot_elo[t] = elo(a[idx], b[idx], s[idx], m, elo_k)
    bt_low, bt_high = np.percentile(boot_bt, [2.5, 97.5], axis=0)
    bt_low = np.minimum(bt_low, bt - 1.96 * bt_sd * ELO_SCALE)
    bt_high = np.maximum(bt_high, bt + 1.96 * bt_sd * ELO_SCALE)
    elo_low, elo_high = np.percentile(boot_elo, [2.5, 97.5], axis=0)

    counts = np.bincount(a, minlength=m) + np.bincount(b, minlength=m)
    wins = np.bincount(a, s == 1, m) + np.bincount(b, s == 0, m)
    ties = np.bincount(a, s == 0.5, m) + np.bincount(b, s == 0.5, m)
    points = np.zeros((m, m))
    games = np.zeros((m, m), dtype=int)
    np.add.at(points, (a, b), s)
    np.add.at(points, (b, a), 1 - s)
    np.add.at(games, (a, b), 1)
    np.add.at(games, (b, a), 1)
    for i, x in enumerate(names):
        for j, y in enumerate(names):
            if i != j and games[i, j]:
                winrate[x][y] = (float(points[i, j] / games[i, j]), int(games[i, j]))

    enough = counts >= min_votes
    rows = []
    for i, n in enumerate(names):
        rank = None
        if enough[i]:
            rank = 1 + int(sum(1 for j in range(m) if j != i and enough[j] and bt_low[j] > bt_high[i]))
        rows.append({"rank": rank, "model": n, "bt": float(bt[i]), "bt_low": float(bt_low[i]),
                     "bt_high": float(bt_high[i]), "elo": float(el[i]), "elo_low": float(elo_low[i]),
                     "elo_high": float(elo_high[i]), "votes": int(counts[i]), "wins": int(wins[i]),
                     "ties": int(ties[i]), "losses": int(counts[i] - wins[i] - ties[i]),
                     "win_rate": float((wins[i] + 0.5 * ties[i]) / counts[i]) if counts[i] else 0.0,
                     "enough_votes": bool(enough[i])})
    rows.sort(key=lambda r: (not r["enough_votes"], -(r["bt"] or 0.0)))
    ranked = int(enough.sum())
    if ranked < 2:
        msg = (f"{len(s)} votes: not enough votes for a ranking yet (each model needs {min_votes}). "
               f"{len(s)} 票：票数还不够排名（每个模型至少 {min_votes} 票）。")
    else:
        msg = (f"{len(s)} anonymous votes; 95% intervals from {rounds} bootstrap rounds. Models whose intervals "
               f"overlap share a rank. {len(s)} 票匿名投票；区间重叠的模型并列排名。")
    return Leaderboard(names, rows, winrate, len(s), min_votes, msg, settings)
