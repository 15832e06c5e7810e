"""The web UI (Gradio): `app` builds and launches it; each tab or shared piece is a module of its own (chat,
arena, leaderboard, runs, train, plan, sweep, export, answers; `context` and `places` are what the tabs share)."""
