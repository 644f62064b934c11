"""lmforge: build small, data-efficient language models end to end on one CPU or many GPUs."""

__version__ = "0.1.0"
