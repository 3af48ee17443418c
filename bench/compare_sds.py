"""Compare `pyengine sds eval` runs prompt by prompt.

Reads two or more ``summary.json`` files written by ``pyengine sds eval`` (the first is the
reference), pairs their rows by prompt, and prints:

- mean R-precision and silhouette IoU of each run, in all and per shape and per colour;
- the paired difference of each other run to the reference (mean, standard error and a 95%
  paired-bootstrap interval), over the prompts that both ran;
- the prompts that miss the issue's targets (R-precision < 0.8 or IoU < 0.7).

Example:
    python bench/compare_sds.py runs/sds/eval-all35-sds/summary.json runs/sds/eval-all35-vsd/summary.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyengine.data.shapeworld_images import parse_caption  # noqa: E402
from pyengine.engines.inverse import paired_bootstrap  # noqa: E402

METRICS = ("r_precision", "iou")


def load(path: str) -> tuple[str, dict]:
    with open(path) as f:
        data = json.load(f)
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows or not all(k in rows[0] for k in ("prompt",) + METRICS):
        raise ValueError(f"{path}: not a `pyengine sds eval` summary.json (rows with prompt, r_precision, iou)")
    name = rows[0].get("method", os.path.basename(os.path.dirname(path)))
    return name, {r["prompt"]: r for r in rows}


def group_means(rows: dict, key: int) -> dict:
    """Means per shape (``key`` 0) or per colour (``key`` 1) of the prompts' captions."""
    out: dict = {}
    for prompt, r in rows.items():
        out.setdefault(parse_caption(prompt)[key] or "?", []).append(r)
    return {k: {m: sum(r[m] for r in v) / len(v) for m in METRICS} | {"n": len(v)} for k, v in sorted(out.items())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("summaries", nargs="+", help="summary.json files; the first is the reference")
    ap.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples (default 10000)")
    args = ap.parse_args(argv)
    runs = [(p, *load(p)) for p in args.summaries]
    names = [name for _, name, _ in runs]
    if len(set(names)) < len(names):  # the same method twice (seeds, settings): name the folders too
        names = [f"{name} ({os.path.basename(os.path.dirname(os.path.abspath(p)))})" for p, name, _ in runs]

    print("| run | prompts | R-precision | IoU |\n|---|---|---|---|")
    for label, (_, _, rows) in zip(names, runs):
        mean = {m: sum(r[m] for r in rows.values()) / len(rows) for m in METRICS}
        print(f"| {label} | {len(rows)} | {mean['r_precision']:.3f} | {mean['iou']:.3f} |")

    for key, what in ((0, "shape"), (1, "colour")):
        groups = [group_means(rows, key) for _, _, rows in runs]
        keys = sorted(set().union(*groups))
        print(f"\n| {what} | " + " | ".join(f"{n} R-prec | {n} IoU" for n in names) + " |")
        print("|---|" + "---|---|" * len(runs))
        for k in keys:
            cells = [f"{g[k]['r_precision']:.3f} | {g[k]['iou']:.3f}" if k in g else "- | -" for g in groups]
            print(f"| {k} | " + " | ".join(cells) + " |")

    ref_label, (_, _, ref) = names[0], runs[0]
    for label, (_, _, rows) in zip(names[1:], runs[1:]):
        common = [p for p in ref if p in rows]
        if not common:
            print(f"\n{label}: no prompt in common with {ref_label}")
            continue
        print(f"\n{label} minus {ref_label}, paired over {len(common)} prompts:")
        for m in METRICS:
            a = torch.tensor([rows[p][m] for p in common], dtype=torch.float64)
            b = torch.tensor([ref[p][m] for p in common], dtype=torch.float64)
            d = a - b
            se = float(d.std() / math.sqrt(len(d))) if len(d) > 1 else float("nan")
            mean, lo, hi = paired_bootstrap(a, b, n=args.bootstrap)
            wins = int((d > 0).sum()), int((d < 0).sum())
            print(f"  {m}: {mean:+.3f} (SE {se:.3f}; 95% bootstrap [{lo:+.3f}, {hi:+.3f}]; "
                  f"better on {wins[0]}, worse on {wins[1]})")

    for label, (_, _, rows) in zip(names, runs):
        miss = [f"{p} ({r['r_precision']:.2f}, {r['iou']:.2f})" for p, r in rows.items()
                if r["r_precision"] < 0.8 or r["iou"] < 0.7]
        print(f"\n{label}: {len(miss)} of {len(rows)} prompts under R-precision 0.8 or IoU 0.7"
              + (": " + "; ".join(miss) if miss else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
