#!/usr/bin/env python3
"""Compare two .npy tensors element-wise (numpy only).

Prints one JSON line {"shape", "max_abs_diff", "mean_abs_diff", "n_over_<tol>"} and exits
0 if max_abs_diff <= tolerance, 1 if it is larger (or a value is NaN in only one input), 2 on a shape mismatch
or unreadable input.

Usage: compare_npy.py A.npy B.npy [--tol 1e-4]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def compare(a: np.ndarray, b: np.ndarray, tol: float, chunk: int = 1 << 22) -> dict:
    """Slab-wise in float64, so that two [1,240,480,480] float32 tensors need no full-size temporaries."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    n = fa.size
    max_d, sum_d, n_over, n_nan_mismatch = 0.0, 0.0, 0, 0
    for s in range(0, n, chunk):
        x = fa[s:s + chunk].astype(np.float64)
        y = fb[s:s + chunk].astype(np.float64)
        nx, ny = np.isnan(x), np.isnan(y)
        n_nan_mismatch += int(np.count_nonzero(nx != ny))
        d = np.abs(x - y)
        d[nx & ny] = 0.0                      # NaN in both: equal
        d[nx != ny] = np.inf                  # NaN in one only: a difference
        if d.size:
            max_d = max(max_d, float(d.max()))
            fin = np.isfinite(d)
            sum_d += float(d[fin].sum())
        n_over += int(np.count_nonzero(d > tol))
    return {"max_abs_diff": max_d, "mean_abs_diff": sum_d / n if n else 0.0, "n_over": n_over,
            "n_nan_mismatch": n_nan_mismatch}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tol", default="1e-4", help="maximum allowed absolute difference (default 1e-4)")
    a = ap.parse_args(argv)
    try:
        tol = float(a.tol)
    except ValueError:
        ap.error(f"--tol: not a number: {a.tol!r}")
    try:
        x = np.load(a.a, mmap_mode="r")
        y = np.load(a.b, mmap_mode="r")
    except Exception as e:  # noqa: BLE001 - report any load failure as one JSON line
        print(json.dumps({"error": f"cannot load: {e}"}))
        return 2
    if x.shape != y.shape:
        print(json.dumps({"error": "shape mismatch", "shape_a": list(x.shape), "shape_b": list(y.shape)}))
        return 2
    r = compare(x, y, tol)
    tol_key = "n_over_" + a.tol.strip()   # as written: n_over_1e-4 by default
    out = {"shape": list(x.shape), "max_abs_diff": r["max_abs_diff"], "mean_abs_diff": r["mean_abs_diff"],
           tol_key: r["n_over"]}
    if x.dtype != y.dtype:
        out["dtypes"] = [str(x.dtype), str(y.dtype)]
    if r["n_nan_mismatch"]:
        out["n_nan_mismatch"] = r["n_nan_mismatch"]
    print(json.dumps(out))
    return 0 if r["max_abs_diff"] <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
