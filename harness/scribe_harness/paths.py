"""Where the harness finds the checkout's recordings (an editable install of the checkout)."""

from __future__ import annotations

from pathlib import Path

#: The repository this harness was installed from (editable install).
ROOT = Path(__file__).resolve().parents[2]
#: Committed test recordings (tests/fixtures).
FIXTURES = ROOT / "tests" / "fixtures"
#: The reference recordings beside the checkout (../shared/data).
SHARED_DATA = ROOT.parent / "shared" / "data"
