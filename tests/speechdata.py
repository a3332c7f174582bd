"""The real-speech test set (../shared/speech): where it is and which clips have trustworthy references."""

import csv
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEECH = Path(os.environ.get("QUICKTURN_SPEECH", REPO.parent / "shared" / "speech"))


def speech_rows(kind: str = "utterance") -> list[dict]:
    with open(SPEECH / "manifest.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [r for r in rows if r["kind"] == kind]


UNFINISHED = (",", ";", ":", "-")  # a reference ending so is a sentence fragment (LJSpeech cuts), not a finished turn


def finished(row: dict) -> bool:
    """The utterance is a finished turn: its reference does not stop mid-sentence."""
    return not row["reference"].rstrip().endswith(UNFINISHED)


def dev_set() -> list[dict]:
    """Utterances whose reference came from the source, not from an ASR (see shared/speech/README.md)."""
    return [r for r in speech_rows() if "unverified" not in r["note"] and "ASR-derived" not in r["reference_source"]]


def splice_gaps() -> dict[str, float]:
    """The v2v benchmark's word gaps: clip -> seconds where it splices 600 ms of silence (bench/splice_points.json)."""
    return json.loads((REPO / "bench" / "splice_points.json").read_text())
