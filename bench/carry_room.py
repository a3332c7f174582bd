"""Make room for a GPU call's carry, and put it back afterwards.

The device copies the working tree (tracked files and untracked files git does not ignore) plus the carried
folders, at most 64 MiB in all, and refuses a call above that before it starts (costing nothing). bench/results
grows every session, so before a call this moves the largest committed result files out to a holding folder
until the total fits, and after the call moves them back:

    python bench/carry_room.py --out      # before the call: prints what it moved and the total
    python bench/carry_room.py --back     # after it (before any commit: git sees the moved files as deleted)
    python bench/carry_room.py            # only print the total
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = (".gpu_carry", ".tts_carry", ".whl")
LIMIT = 64 * 2**20
MARGIN = 1 * 2**20  # for the files the call itself adds before it is sent (none today) and rounding
HOLD = Path("/tmp/qt-carry-hold")


def _git_files(*args: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", *args], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / p for p in out.decode().split("\0") if p]


def tree_bytes() -> int:
    files = _git_files() + _git_files("--others", "--exclude-standard")
    carried = [f for d in CARRY if (REPO / d).exists() for f in (REPO / d).rglob("*")]
    return sum(f.stat().st_size for f in files + carried if f.is_file())


def make_room(limit: int = LIMIT - MARGIN) -> list[str]:
    total = tree_bytes()
    moved: list[str] = []
    results = sorted((f for f in _git_files("bench/results") if f.is_file()), key=lambda f: f.stat().st_size,
                     reverse=True)
    HOLD.mkdir(parents=True, exist_ok=True)
    for f in results:
        if total <= limit:
            break
        rel = str(f.relative_to(REPO))
        total -= f.stat().st_size
        (HOLD / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(f), HOLD / rel)
        moved.append(rel)
    manifest = HOLD / "moved.json"
    old = json.loads(manifest.read_text()) if manifest.exists() else []
    manifest.write_text(json.dumps(old + moved))
    return moved


def put_back() -> list[str]:
    manifest = HOLD / "moved.json"
    moved = json.loads(manifest.read_text()) if manifest.exists() else []
    for rel in moved:
        (REPO / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(HOLD / rel), REPO / rel)
    manifest.unlink(missing_ok=True)
    return moved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--out", action="store_true", help="move result files out until the carry fits")
    g.add_argument("--back", action="store_true", help="move them back")
    args = ap.parse_args()
    if args.out:
        moved = make_room()
        print(f"moved {len(moved)} result files to {HOLD}" + (": " + ", ".join(Path(m).name for m in moved)
                                                              if moved else ""))
    elif args.back:
        print(f"moved {len(put_back())} result files back")
    total = tree_bytes()
    print(f"working tree + {' + '.join(CARRY)}: {total / 2**20:.1f} MiB of {LIMIT / 2**20:.0f}"
          + ("" if total <= LIMIT else "  (OVER: the call would be refused)"))
    return 0 if total <= LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
