"""Fixed-width byte strings in records: the one place that encodes and decodes them.

Record fields such as a slug, a reason or a label are ``S<n>`` (numpy) or raw byte ranges,
NUL-padded to their width. Encoding truncates to the width (a caller that must not lose bytes
checks the length first); decoding drops the padding and never raises on bad bytes: a torn
or foreign record shows replacement characters instead of killing a reader.
"""

from __future__ import annotations

from typing import Any


def decode_nul(raw: Any) -> str:
    """``b"btc-5m\\0\\0"`` (bytes, a numpy ``S`` scalar or a memoryview) -> ``"btc-5m"``."""
    return bytes(raw).rstrip(b"\0").decode(errors="replace")


def encode_nul(text: str, width: int) -> bytes:
    """``text`` as UTF-8, cut to ``width`` bytes and NUL-padded to exactly ``width``."""
    return text.encode()[:width].ljust(width, b"\0")
