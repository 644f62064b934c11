"""The unit every data step reads and writes: a ``Document`` with an id, text and metadata.

Readers yield documents; pipeline steps map iterators of documents to iterators of documents.
``metadata`` keeps the fields a record carried besides its text (and where it came from:
``source`` file and ``line``), so nothing is lost on the way through.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad input data; the message starts with ``file:line``."""


@dataclass
class Document:
    id: str
    text: str
    metadata: dict = field(default_factory=dict)
