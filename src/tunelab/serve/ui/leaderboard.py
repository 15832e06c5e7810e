"""The UI's Leaderboard tab: Bradley-Terry and Elo with bootstrap intervals, vote counts, the win-rate matrix, and
the CSV / JSON export (every stored vote too, where the page may offer it)."""

from __future__ import annotations

import json
import time

from tunelab.serve.ratings import COLUMNS, leaderboard
from tunelab.serve.ui.context import UIContext


def leaderboard_tab(ctx: UIContext) -> list:
    """Leaderboard: ratings, win-rate matrix, and the CSV / JSON export (the votes too, when `export_votes`).
    Returns the components `UIContext.board_outputs` fills, and the tab."""
    import gradio as gr

    with gr.Tab("Leaderboard 排行榜", id="leaderboard", visible=bool(ctx.names)) as tab:
        board_msg = gr.Markdown("", elem_id="leaderboard-message")
        board_table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="leaderboard-table",
                                   label="ratings from anonymous battles 匿名对战评分")
        board_matrix = gr.Dataframe(interactive=False, elem_id="leaderboard-matrix",
                                    label="win rate of row vs column 行对列胜率 (ties count ½ 平局算半场)")
        with gr.Row():
            refresh = gr.Button("Refresh 刷新", elem_id="leaderboard-refresh")
            export = gr.Button("Export CSV / JSON 导出", elem_id="leaderboard-export")
        export_files = gr.File(label="exports 导出文件", file_count="multiple", interactive=False,
                               elem_id="leaderboard-files")
        gr.Markdown(f"Bradley-Terry is fitted with a Gaussian prior (regularised) and is the ranking; Elo "
                    f"(K=32) is shown for reference. A model needs {ctx.min_votes} votes to be ranked; models whose "
                    f"95% intervals overlap share a rank. "
                    f"Bradley-Terry 带正则化，用于排名；Elo 仅供参考。每个模型至少 {ctx.min_votes} 票才排名。")

    board = [board_msg, board_table, board_matrix]
    refresh.click(ctx.board_outputs, None, board)

    def export_fn():
        lb = leaderboard(ctx.store.votes(), ctx.names, min_votes=ctx.min_votes)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        csv_path = ctx.export_dir / f"leaderboard-{stamp}.csv"
        json_path = ctx.export_dir / f"leaderboard-{stamp}.json"
        csv_path.write_text(lb.to_csv(), encoding="utf-8")
        json_path.write_text(lb.to_json(), encoding="utf-8")
        if not ctx.export_votes:
            return [str(csv_path), str(json_path)]
        votes_path = ctx.export_dir / f"votes-{stamp}.jsonl"
        votes_path.write_text("".join(json.dumps(v, ensure_ascii=False) + "\n"
                                      for v in ctx.store.votes(anonymous_only=False)), encoding="utf-8")
        return [str(csv_path), str(json_path), str(votes_path)]
    export.click(export_fn, None, export_files)
    return board, tab
