"""Synthetic data for post-training (``lmforge synth``).

- ``math``: verifiable bilingual math word problems (levels 1-4, exact answers, a train/test
  split disjoint by construction) and ``math_accuracy`` to score a model on them;
  ``math_templates`` holds the scenarios and wordings, ``answers`` the number parsing,
  canonical answers, ``extract_answer`` and ``answers_match``.
- ``pairs``: DPO preference pairs, a correct solution against one with a planted error.
- ``identity``: "who are you?" conversations with a configurable name and creator.
- ``template``: model-written problems from seed snippets through a prompt template;
  ``teacher``: a teacher's answers to chat prompts (black-box distillation data). Both run on
  ``backends`` (a local checkpoint or an OpenAI-compatible endpoint) and are resumable
  (``resumable``).

::

    from lmforge.synth.math import generate_problems, math_accuracy
    from lmforge.synth.pairs import make_pairs
    train = generate_problems(4000, levels=[1, 2], langs=["en", "zh"], seed=0, split="train")
    pairs = make_pairs(train[:1000], seed=0)
"""
