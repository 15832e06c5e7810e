"""Built-in data generators, each reproducible from a seed: `arithmetic` (competition-format problems, the kinds
and difficulty options recipes set), `reading` (a templated extract-the-answer reading task, zh/en) and
`encyclopedia` (a made-up world's articles for MiniGPT pretraining, with question-answer pairs about them; its
parts are the `encyclopedia_*` modules: words, world, articles, qa, noise). `qa_split` splits such pairs for
fine-tuning as a corpus split their articles."""
