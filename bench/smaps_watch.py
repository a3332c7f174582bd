"""Where does a process's RSS go? Reads /proc/PID/smaps every few seconds while the process runs, then says which
kind of mapping grew: glibc's main heap, its per-thread arena heaps (64 MiB-aligned anonymous regions), other
anonymous mappings (mmapped malloc chunks: onnxruntime arena extensions, CTranslate2's large buffers, torch tensors),
file-backed mappings (libraries, mmapped weights).

    python bench/soak.py --config cpu ... &
    python bench/smaps_watch.py $! --every 10 --out /tmp/smaps.jsonl      # samples until the process exits
    python bench/smaps_watch.py --report /tmp/smaps.jsonl --from 150      # per kind over time + what grew most

Linux only. This is how issue 9's CPU soak growth was traced to Piper's onnxruntime arena (docs/perf-notes.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time


def read_smaps(pid: int) -> list[dict]:
    maps, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            p = line.split()
            if not p:
                continue
            if not p[0].endswith(":"):  # a mapping's header: start-end perms offset dev inode [path]
                a, b = p[0].split("-")
                cur = {"a": a, "size_kb": (int(b, 16) - int(a, 16)) >> 10, "path": p[5] if len(p) > 5 else ""}
                maps.append(cur)
            elif p[0] == "Rss:" and cur is not None:
                cur["rss_kb"] = int(p[1])
    return [m for m in maps if m.get("rss_kb")]


def kind(m: dict) -> str:
    p = m["path"]
    if p == "[heap]":
        return "glibc main heap"
    if p.startswith("["):
        return p
    if p:
        return "file-backed"
    if int(m["a"], 16) % (64 << 20) == 0 and m["size_kb"] <= 65536:
        return "glibc thread arenas"
    return "other anonymous (mmapped chunks)"


def watch(pid: int, every: float, out: str) -> None:
    t0 = time.monotonic()
    with open(out, "w") as f:
        while os.path.exists(f"/proc/{pid}"):
            try:
                maps = read_smaps(pid)
            except (FileNotFoundError, ProcessLookupError):
                break
            f.write(json.dumps({"t_s": round(time.monotonic() - t0, 1), "maps": maps}) + "\n")
            f.flush()
            time.sleep(every)


def report(path: str, t_from: float) -> None:
    rows = [json.loads(line) for line in open(path)]
    kinds = ["glibc main heap", "glibc thread arenas", "other anonymous (mmapped chunks)", "file-backed"]

    def by_kind(r):
        c = collections.Counter()
        for m in r["maps"]:
            c[kind(m)] += m["rss_kb"]
        return c

    print("t_s  total_MB  " + "  ".join(kinds))
    for r in rows:
        c = by_kind(r)
        print(f"{r['t_s']:6.0f} {sum(c.values()) >> 10:8d}  " + "  ".join(f"{c[k] >> 10:{len(k)}d}" for k in kinds))
    a = next((r for r in rows if r["t_s"] >= t_from), rows[0])
    b = rows[-1]
    ma, mb = {m["a"]: m for m in a["maps"]}, {m["a"]: m for m in b["maps"]}
    grew = sorted(((mb.get(k, {}).get("rss_kb", 0) - ma.get(k, {}).get("rss_kb", 0), k) for k in set(ma) | set(mb)),
                  reverse=True)
    print(f"mappings whose RSS changed most from t={a['t_s']} s to t={b['t_s']} s (a mapping that moved or merged "
          "shows as one gone and one new):")
    for d, k in [g for g in grew if abs(g[0]) >= 1024][:12]:
        m = mb.get(k) or ma[k]
        print(f"  {d / 1024:+8.1f} MB  {k}  size {m['size_kb'] >> 10} MB  {kind(m)} {m['path']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pid", nargs="?", type=int)
    p.add_argument("--every", type=float, default=10.0)
    p.add_argument("--out", default="smaps.jsonl")
    p.add_argument("--report", default=None, help="a file written by a watch: summarise it")
    p.add_argument("--from", dest="t_from", type=float, default=150.0, help="report growth from this time on")
    args = p.parse_args(argv)
    if args.report:
        report(args.report, args.t_from)
    elif args.pid:
        watch(args.pid, args.every, args.out)
    else:
        p.error("give a PID to watch or --report FILE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
