"""Where the parity fixtures live: ``tests/fixtures/parity``, data written by THUDM's original code (see its README)."""

from pathlib import Path

PARITY_DIR = Path(__file__).resolve().parent / "fixtures" / "parity"
