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

import importlib

# Imported one by one so a step module being absent (a partial checkout) names itself.
for _module in ("normalize", "langid", "safety", "quality", "repetition", "dedup", "decontam", "scoring", "topics"):
    try:
        importlib.import_module(f"lmforge.data.steps.{_module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"lmforge.data.steps.{_module}":
            raise
