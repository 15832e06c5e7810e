"""tunelab: a workbench for fine-tuning, evaluating and serving LLMs (data → model → train → eval → score)."""

__version__ = "0.1.0"
