#!/usr/bin/env python3
"""Allocation sites per call from a dhat profile (benches/allocations.rs --sites).

    benches/alloc_sites.py FILE CALLS [TOP] [--live]

CALLS: the calls the profile covers (warm-up 1,000 + measured N); with
--live, what is still allocated at the profile's end per CALLS (e.g. per
idle connection, CALLS = their number), in bytes. Each site is
named by its first frames outside the allocator, std, core, alloc and
hashbrown; sites with the same name are summed.
"""
import json
import re
import sys

live = "--live" in sys.argv
args = [a for a in sys.argv[1:] if a != "--live"]
path, calls = args[0], int(args[1])
top = int(args[2]) if len(args) > 2 else 30
field = "eb" if live else "tbk"
d = json.load(open(path))
ftbl = d["ftbl"]
skip = re.compile(r"^(dhat::|alloc::|core::|std::|hashbrown::|<alloc::|<core::|<std::|__rust|\[root\]|<hashbrown|<dhat|<\[|<T as alloc)")


def name(fs):
    frames = []
    for f in fs:
        text = ftbl[f]
        fn = text.split(": ", 1)[-1]
        fn = re.sub(r" \(.*\)$", "", fn)
        fn = re.sub(r"::h[0-9a-f]{16}$", "", fn)
        if skip.match(fn) and not frames:
            continue
        frames.append(fn[:110])
        if len(frames) == 3:
            break
    return " <- ".join(frames) or "?"


sums = {}
for pp in d["pps"]:
    k = name(pp["fs"])
    sums[k] = sums.get(k, 0) + pp[field]
total = sum(sums.values())
what = "bytes live at the end" if live else "allocations"
print(f"{total / calls:.1f} {what} per call in all ({path})")
for k, v in sorted(sums.items(), key=lambda kv: -kv[1])[:top]:
    print(f"{v / calls:7.2f}  {k}")
