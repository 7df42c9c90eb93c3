"""Word error rate as the reference recordings define it (../shared/data/README.md).

The rules (lower-casing, punctuation removed, any white space separates words; NFC for Korean)
are scribe_libs.scoring's: one helper for the tests, the tools and ``scribe bench``.
"""

from __future__ import annotations

from scribe_libs.scoring import wer

__all__ = ["wer"]
