"""lmforge's built-in pipeline steps; importing this package registers them all.

| module | step types |
| --- | --- |
| normalize | ``normalize`` |
| langid | ``langid`` |
| safety | ``unsafe_filter``, ``pii`` |
| quality, repetition | ``length_filter``, ``gopher_quality``, ``gopher_repetition``, ``c4_filter``, ``fineweb_filter``, ``script_ratio`` |
| dedup (on minhash) | ``exact_dedup``, ``minhash_dedup``, ``line_dedup`` |
| decontam | ``decontaminate`` |
| scoring (on classifier) | ``perplexity``, ``quality_classifier`` |
| topics | ``topic`` |
"""

from lmforge.data.steps import (  # noqa: F401  (each module registers its steps)
    decontam,
    dedup,
    langid,
    normalize,
    quality,
    repetition,
    safety,
    scoring,
    topics,
)
