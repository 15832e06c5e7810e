"""Measuring instruments that know no task, below `tunelab.tasks` (lm-evaluation-harness keeps its metrics
the same way, in `api/metrics.py`): `qa_metrics` (SQuAD / CMRC / MindFormers EM and F1), `rouge` (Rouge-L),
`prediction_files` (reading hand-in prediction files), `loglik` (log-likelihood of continuations),
`perplexity` (strided-window perplexity) and `sampled` (pass@k and majority vote over sampled answers). Each
one with a reference implementation is tested against it.
"""
