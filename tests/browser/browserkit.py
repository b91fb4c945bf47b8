"""What the browser tests share besides fixtures (importable: ``from browserkit import ...``;
``conftest`` is not, once several suites' conftest modules are collected together)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = os.environ.get("SAGAWAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = Path(os.environ.get("SAGAWAY_SCREENSHOT_DIR", "build/screenshots"))


@dataclass(frozen=True)
class Server:
    url: str
    db_url: str  # the one SQLite file: shop and saga log
