"""Evaluation: bits per byte, multiple choice, generative math, the lm-eval bridge, in-training evaluation.

``lmforge eval CKPT --task ...`` (``cli.py``) runs tasks (``tasks.py``) through one scorer
(``scorer.py``: batched log-likelihoods) and the inference engine (generation), prints a table
and writes ``eval_results.json`` next to the checkpoint.
"""
