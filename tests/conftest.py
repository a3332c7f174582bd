import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speechdata import SPEECH, dev_set, speech_rows  # noqa: E402,F401  (re-exported for tests and benches)


@pytest.fixture(scope="session")
def speech() -> Path:
    if not (SPEECH / "manifest.tsv").exists():
        pytest.fail(f"test speech not found at {SPEECH} (set QUICKTURN_SPEECH)")
    return SPEECH
