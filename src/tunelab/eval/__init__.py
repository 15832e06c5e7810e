"""Evaluation: `sets` (a recipe's `eval:` section or `tunelab eval`'s flags -> what is run), `runner` (runs those
sets on a model), `retention` (abilities kept against a base), `evaluate` (`tunelab eval`) and `predict`
(`tunelab predict`). The instruments they use, which know no task, are `tunelab.metrics`.
"""
