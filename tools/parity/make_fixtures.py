#!/usr/bin/env python3
"""(Re)create the committed tensor-parity fixtures in preprocess-svc/tests/fixtures/parity/<case>/.

Each case directory holds:
  series.zip      the input archive (synthetic series from ../shared/tools/make_synthetic_ct.py, or a
                  real series re-zipped from ../shared/testdata)
  reference.json  case, source, shape, interior box, full-tensor stats (float64, population std),
                  n_samples, tolerance, skip_lung_validation
  samples.bin     little-endian records (u64 flat index into the C-order [1,240,480,480] tensor, f32 value),
                  12 bytes each, no header

The reference tensor is produced by running the Python baseline
(../shared/bench/baseline_preprocess.py --save-npy, torch resampler) as an external program.

Usage:
  /tmp/pyref/bin/python tools/parity/make_fixtures.py [--cases synth_down,synth_up] [--python PY]
Needs: pydicom numpy dicom2nifti nibabel torch in the interpreter given by --python (default: this one).
Everything is deterministic (fixed generator seeds, fixed sampling seeds, fixed ZIP timestamps).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
SHARED = os.path.abspath(os.path.join(ROOT, "..", "shared"))
GENERATOR = os.path.join(SHARED, "tools", "make_synthetic_ct.py")
BASELINE = os.path.join(SHARED, "bench", "baseline_preprocess.py")
OUT_ROOT = os.path.join(ROOT, "preprocess-svc", "tests", "fixtures", "parity")
PHILIPS_STUDY = os.path.join(SHARED, "testdata", "dicom", "series",
                             "dcm_qa_ct_philips_ingenuity_study_S21570_scout_5mm28sl_sc.zip")

OUT_SHAPE = (1, 240, 480, 480)            # [C, D, H, W]
TARGET_HWD = (480, 480, 240)              # crop/pad targets in (H, W, D) order, as the reference
TARGET_SPACING_DHW = (1.5, 0.75, 0.75)
N_INTERIOR, N_WHOLE = 40000, 2000
TOLERANCE = 1e-4
REC_DTYPE = np.dtype([("idx", "<u8"), ("val", "<f4")])   # packed: itemsize 12
assert REC_DTYPE.itemsize == 12

# name -> generator arguments (synthetic) ; seeds differ per case so the series UIDs differ too
SYNTH_CASES = {
    "synth_down": ["--slices", "60", "--rows", "128", "--cols", "128", "--pixel-spacing", "0.5",
                   "--slice-spacing", "1.0", "--seed", "101"],
    "synth_up": ["--slices", "30", "--rows", "64", "--cols", "64", "--pixel-spacing", "1.5",
                 "--slice-spacing", "3.0", "--seed", "102"],
    "synth_crop": ["--slices", "24", "--rows", "96", "--cols", "96", "--pixel-spacing", "5.0",
                   "--slice-spacing", "2.0", "--seed", "103"],
    "synth_aniso": ["--slices", "45", "--rows", "80", "--cols", "112", "--pixel-spacing", "0.9",
                    "--row-spacing", "0.7", "--slice-spacing", "1.25", "--seed", "104"],
}
REAL_CASES = {
    "philips_real_28sl": {"zip": PHILIPS_STUDY, "prefix": "S21570/S2010/"},
}
ALL_CASES = list(SYNTH_CASES) + list(REAL_CASES)
# The synthetic series are short (48-90 mm of z coverage), so a lung validator with the reference constants
# (lung run >= 145 mm, > 1500 lung voxels per slice) rejects them even though lungs are present; they are
# still marked skip_lung_validation=false as requested. Flip this if the parity test runs the validator.
SYNTH_SKIP_LUNG_VALIDATION = False
SAMPLE_SEED = {"synth_down": 9001, "synth_up": 9002, "synth_crop": 9003, "synth_aniso": 9004,
               "philips_real_28sl": 9005}


def rel(p: str) -> str:
    return os.path.relpath(p, ROOT)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.stderr.write(f"command failed (rc={r.returncode}): {shlex.join(cmd)}\n")
        sys.stderr.write(r.stdout[-4000:] + "\n" + r.stderr[-4000:] + "\n")
        raise RuntimeError(f"command failed: {cmd[1] if len(cmd) > 1 else cmd[0]}")
    return r


def make_synthetic(python: str, case: str, zip_out: str) -> str:
    args = SYNTH_CASES[case]
    run([python, GENERATOR, "--zip", zip_out] + args)
    return "make_synthetic_ct.py --zip series.zip " + " ".join(args)


def make_real(case: str, zip_out: str) -> str:
    spec = REAL_CASES[case]
    src, prefix = spec["zip"], spec["prefix"]
    n = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(zip_out, "w") as zout:
        for info in zin.infolist():        # original order, original names and timestamps
            name = info.filename
            if info.is_dir() or not name.startswith(prefix):
                continue
            if not os.path.basename(name).startswith("I"):       # leaves DIRFILE out
                continue
            zi = zipfile.ZipInfo(name, date_time=info.date_time)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            zout.writestr(zi, zin.read(info), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
            n += 1
    if n != 28:
        raise RuntimeError(f"{case}: expected 28 files under {prefix}, found {n}")
    return (f"testdata/dicom/series/{os.path.basename(src)}: the {n} files {prefix}I* (DIRFILE left out), "
            f"re-zipped with deflate level 9, original paths and timestamps")


def run_baseline(python: str, zip_path: str, workdir: str) -> tuple[np.ndarray, dict]:
    npy = os.path.join(workdir, "ref.npy")
    js = os.path.join(workdir, "baseline.json")
    run([python, BASELINE, zip_path, "--save-npy", npy, "--workdir", os.path.join(workdir, "bp"),
         "--json", js])
    with open(js) as fh:
        info = json.load(fh)
    arr = np.load(npy)
    return arr, info


def resampled_size_f32(n_dhw, zooms_ijk) -> list[int]:
    """The reference's size rule: int(n * float32(spacing / target)), returned in (H, W, D)."""
    z = [np.float32(v) for v in zooms_ijk]
    cur = (z[2], z[0], z[1])
    d, h, w = (int(n * (c / t)) for n, c, t in zip(n_dhw, cur, TARGET_SPACING_DHW))
    return [h, w, d]


def interior_box(resampled_hwd) -> list[int]:
    """[d0, d1, h0, h1, w0, w1], half-open, of the part of the output that came from the resampled volume."""
    spans = []
    for n, t in zip(resampled_hwd, TARGET_HWD):
        kept = min(n, t)
        before = (t - kept) // 2
        spans.append((before, before + kept))
    (h0, h1), (w0, w1), (d0, d1) = spans
    return [d0, d1, h0, h1, w0, w1]


def flat_index(d, h, w):
    _, _, H, W = OUT_SHAPE
    return (np.asarray(d, np.uint64) * H + np.asarray(h, np.uint64)) * W + np.asarray(w, np.uint64)


def draw_samples(case: str, box: list[int]) -> np.ndarray:
    d0, d1, h0, h1, w0, w1 = box
    rng = np.random.default_rng(SAMPLE_SEED[case])
    inner = flat_index(rng.integers(d0, d1, N_INTERIOR), rng.integers(h0, h1, N_INTERIOR),
                       rng.integers(w0, w1, N_INTERIOR))
    total = int(np.prod(OUT_SHAPE))
    whole = rng.integers(0, total, N_WHOLE).astype(np.uint64)
    corners_in = [flat_index(d, h, w) for d in (d0, d1 - 1) for h in (h0, h1 - 1) for w in (w0, w1 - 1)]
    _, D, H, W = OUT_SHAPE
    corners_all = [flat_index(d, h, w) for d in (0, D - 1) for h in (0, H - 1) for w in (0, W - 1)]
    return np.concatenate([inner, whole, np.array(corners_in, np.uint64), np.array(corners_all, np.uint64)])


def full_stats(vol: np.ndarray) -> dict:
    """min, max, mean, population std of the whole tensor in float64 (slab by slab, two passes)."""
    n = vol.size
    total = sum(float(np.sum(sl, dtype=np.float64)) for sl in vol)
    mean = total / n
    ss = sum(float(np.sum(np.square(sl.astype(np.float64) - mean))) for sl in vol)
    return {"min": float(vol.min()), "max": float(vol.max()), "mean": mean, "std": (ss / n) ** 0.5}


def lung_profile(zip_path: str) -> dict:
    """Rough lung presence per native slice: pixels with -920 < HU < -780 (lung parenchyma of the
    synthetic phantom is -850 +- 40 HU plus noise; air is -1000)."""
    import pydicom
    per = []
    with zipfile.ZipFile(zip_path) as zf:
        for n in zf.namelist():
            if n.endswith("/"):
                continue
            ds = pydicom.dcmread(io.BytesIO(zf.read(n)))
            hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + \
                float(getattr(ds, "RescaleIntercept", 0))
            per.append((float(ds.ImagePositionPatient[2]), int(((hu > -920) & (hu < -780)).sum()), hu.size))
    per.sort(key=lambda r: -r[0])
    counts = np.array([p[1] for p in per])
    run_len, best = 0, 0
    for c in counts > 1500:
        run_len = run_len + 1 if c else 0
        best = max(best, run_len)
    return {"slices": len(counts), "slices_with_lung": int((counts > 0).sum()),
            "max_lung_frac": round(float(counts.max() / per[0][2]), 3),
            "slices_over_1500px": int((counts > 1500).sum()), "longest_run_over_1500px": best}


def build_case(python: str, case: str, keep_tmp: bool) -> dict:
    out_dir = os.path.join(OUT_ROOT, case)
    os.makedirs(out_dir, exist_ok=True)
    zip_out = os.path.join(out_dir, "series.zip")
    tmp = tempfile.mkdtemp(prefix=f"parity_{case}_")
    t0 = time.perf_counter()
    if case in SYNTH_CASES:
        source = make_synthetic(python, case, zip_out)
    else:
        source = make_real(case, zip_out)
    arr, info = run_baseline(python, zip_out, tmp)
    if tuple(arr.shape) != OUT_SHAPE or arr.dtype != np.float32:
        raise RuntimeError(f"{case}: unexpected reference tensor {arr.shape} {arr.dtype}")

    res_hwd = [int(v) for v in info["resampled_shape_HWD"]]
    nii = info["nifti_shape"]                     # (i, j, k)
    mine = resampled_size_f32((nii[2], nii[0], nii[1]), info["zooms"])
    if mine != res_hwd:
        raise RuntimeError(f"{case}: own size rule {mine} != baseline resampled {res_hwd}")
    box = interior_box(res_hwd)
    d0, d1, h0, h1, w0, w1 = box
    vol = arr[0]
    pads = [vol[:d0], vol[d1:], vol[d0:d1, :h0], vol[d0:d1, h1:], vol[d0:d1, h0:h1, :w0], vol[d0:d1, h0:h1, w1:]]
    if not all(np.all(p == -1.0) for p in pads):
        raise RuntimeError(f"{case}: values outside the interior box are not all -1")

    stats = full_stats(vol)
    bs = info["output_stats"]
    for k in stats:
        if abs(stats[k] - bs[k]) > 1e-9:
            raise RuntimeError(f"{case}: stat {k} {stats[k]} != baseline {bs[k]}")

    idx = draw_samples(case, box)
    rec = np.empty(idx.size, REC_DTYPE)
    rec["idx"] = idx
    rec["val"] = arr.reshape(-1)[idx.astype(np.int64)]
    with open(os.path.join(out_dir, "samples.bin"), "wb") as fh:
        fh.write(rec.tobytes())

    ref = {
        "case": case,
        "source": source,
        "shape": list(OUT_SHAPE),
        "interior": box,
        "stats": stats,
        "n_samples": int(idx.size),
        "tolerance": TOLERANCE,
        "skip_lung_validation": SYNTH_SKIP_LUNG_VALIDATION if case in SYNTH_CASES else True,
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as fh:
        json.dump(ref, fh, indent=2)
        fh.write("\n")
    lung = lung_profile(zip_out) if case in SYNTH_CASES else None
    if lung is not None and lung["slices_with_lung"] == 0:
        raise RuntimeError(f"{case}: no lung-like voxels in the synthetic series")
    if not keep_tmp:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    with open(zip_out, "rb") as fh:
        sha = hashlib.sha256(fh.read()).hexdigest()[:12]
    return {"case": case, "zip_bytes": os.path.getsize(zip_out), "zip_sha256_12": sha,
            "nifti_shape": nii, "zooms": [round(z, 4) for z in info["zooms"]], "resampled_hwd": res_hwd,
            "interior": box, "stats": stats, "n_samples": int(idx.size), "lung": lung,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(ALL_CASES), help="comma-separated subset of: " + ", ".join(ALL_CASES))
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter with pydicom numpy dicom2nifti nibabel torch (runs the shared tools)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary reference .npy files")
    a = ap.parse_args(argv)
    cases = [c for c in a.cases.split(",") if c]
    bad = [c for c in cases if c not in ALL_CASES]
    if bad:
        ap.error(f"unknown case(s): {bad}")
    for p in (GENERATOR, BASELINE):
        if not os.path.isfile(p):
            sys.exit(f"missing shared tool: {p}")
    rows = []
    for c in cases:
        print(f"[{c}] building ...", flush=True)
        rows.append(build_case(a.python, c, a.keep_tmp))
    print()
    hdr = f"{'case':<18} {'zip KiB':>8} {'nifti (i,j,k)':>15} {'resampled HWD':>15} {'interior [d0,d1,h0,h1,w0,w1]':>30} " \
          f"{'min':>9} {'max':>9} {'mean':>11} {'std':>10} {'lung sl/>1500/run':>17}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        s = r["stats"]
        lung = r["lung"]
        ltxt = "-" if lung is None else f"{lung['slices_with_lung']}/{lung['slices_over_1500px']}/{lung['longest_run_over_1500px']}"
        print(f"{r['case']:<18} {r['zip_bytes'] / 1024:>8.0f} {'x'.join(map(str, r['nifti_shape'])):>15} "
              f"{'x'.join(map(str, r['resampled_hwd'])):>15} {str(r['interior']):>30} "
              f"{s['min']:>9.5f} {s['max']:>9.5f} {s['mean']:>11.7f} {s['std']:>10.7f} {ltxt:>17}")
    print("\nlung columns: native slices with lung-like voxels / slices with > 1500 such voxels / longest run of those")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
