"""Timing helpers shared by the benchmarks: events + do_bench on GPU, median of repeats on CPU."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time

import torch


def commit() -> str:
    if os.environ.get("PYENGINE_COMMIT"):  # set by bench/gpu_check.sh (a GPU machine gets no .git)
        return os.environ["PYENGINE_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def bench(fn, device: str, warmup: int = 1, reps: int = 5, budget_s: float = 20.0) -> float:
    """Median milliseconds of fn()."""
    if device.startswith("cuda"):
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
        if time.perf_counter() - start > budget_s and len(times) >= 2:
            break
    return statistics.median(times)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|")
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) + " |")


def save_json(path: str | None, payload: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(payload, f, indent=1)


def bench_side_by_side(fns: dict, warmup: int = 2, reps: int = 15, budget_s: float = 60.0) -> dict:
    """Median milliseconds of each fn(), CPU only, the fns run in turn within every repeat.

    Interleaving puts every provider under the same load at the same moment, which makes the
    ratios trustworthy on a shared machine even when the absolute times drift.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    start = time.perf_counter()
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
        if time.perf_counter() - start > budget_s and len(times[k]) >= 3:
            break
    return {k: statistics.median(v) for k, v in times.items()}
