"""Training data synthesised by a model behind an OpenAI-compatible endpoint (`tunelab synth qa`).

articles.py reads and chunks the articles, prompt.py builds the messages, validate.py judges every reply,
journal.py keeps the output append-only and resumable, client.py talks to the endpoint with its retry
policy, runner.py runs articles concurrently, qa.py puts them together as one call (`synthesize_qa`; the
verb's flags are `tunelab.cli.synth`'s). It sits above serve: a client of any server (a `tunelab serve`
included), imported by nothing below it.
"""
