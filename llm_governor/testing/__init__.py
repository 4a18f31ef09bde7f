"""Test helpers: a local fake AI provider the official SDKs can talk to.

Use :class:`FakeProvider` in tests, examples and demos to exercise rate
limiting and budgeting end to end without network access or real spend.
"""

from llm_governor.testing._ledger import (
    Ledger,
    LedgerEntry,
    Outcome,
    ProviderName,
    key_fingerprint,
)
from llm_governor.testing._limits import Limits, format_duration
from llm_governor.testing._media import image_size
from llm_governor.testing._pricing import ModelPrice
from llm_governor.testing.fake_provider import FakeProvider, Fault, FaultKind

__all__ = [
    "FakeProvider",
    "Fault",
    "FaultKind",
    "Ledger",
    "LedgerEntry",
    "Limits",
    "ModelPrice",
    "Outcome",
    "ProviderName",
    "format_duration",
    "image_size",
    "key_fingerprint",
]
