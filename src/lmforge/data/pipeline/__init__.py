"""The data pipeline: documents through normalization, filters, deduplication and labelling.

See ``lmforge.data.pipeline.base`` for the step contract and ``lmforge.data.pipeline.run``
for running a pipeline from YAML or Python.
"""
