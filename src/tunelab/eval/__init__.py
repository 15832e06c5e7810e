"""Evaluation, in two layers (the stage table in tests/test_import_graph.py):

* measuring instruments that tasks use and that know no task: `qa_metrics` (SQuAD / CMRC / MindFormers EM
  and F1), `rouge` (Rouge-L), `prediction_files` (reading hand-in prediction files), `loglik` (log-likelihood
  of continuations) and `perplexity` (strided-window perplexity);
* running tasks: `sets` (a recipe's `eval:` section or `tunelab eval`'s flags -> what is run), `runner` (runs
  those sets on a model), `retention` (abilities kept against a base), `evaluate` (`tunelab eval`) and
  `predict` (`tunelab predict`).
"""
