"""Where the public Practicus tutorials live (../shared/reference/practicus beside the
project); tests that run them skip when the folder is absent."""

from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "practicus"
