from __future__ import annotations

import sys
from pathlib import Path

# Tests import `components` and `service` from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
