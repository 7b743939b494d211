#!/usr/bin/env bash
# Benchmark: Rust CLI vs the Python reference preprocessing on the default 300-slice synthetic archive.
#
#   Rust:   $PREPROCESS_BIN tensor --recipe ctclip <zip> --out <tmp.npy>    best of N runs (default 3)
#   Python: ../shared/bench/baseline_preprocess.py <zip>                     1 run
# Wall time and peak RSS of each process come from GNU time (`/usr/bin/time -f '%e %M'`); the Python
# baseline's own JSON adds `pipeline_s_excl_import` (stages without the imports).
# Prints a table and writes the same figures to bench/out/preprocess_bench.json. Only prints: no thresholds.
#
# Usage: bench/preprocess_bench.sh [--runs N]
# Environment:
#   PYTHON          interpreter with pydicom numpy dicom2nifti nibabel torch
#                   (default /tmp/pyref/bin/python if it exists, else python3)
#   PREPROCESS_BIN  the Rust CLI (default target/release/preprocess-svc; build it first)
#   SHARED_DIR      the shared reference folder (default ../shared beside the checkout)
set -euo pipefail
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED_DIR="${SHARED_DIR:-$ROOT/../shared}"
GENERATOR="$SHARED_DIR/tools/make_synthetic_ct.py"
BASELINE="$SHARED_DIR/bench/baseline_preprocess.py"
OUT_DIR="$ROOT/bench/out"
ZIP="$OUT_DIR/synth_chest_ct_300.zip"          # same cache file as tools/parity/run_full.sh (variant "default")
JSON_OUT="$OUT_DIR/preprocess_bench.json"
PREPROCESS_BIN="${PREPROCESS_BIN:-$ROOT/target/release/preprocess-svc}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x /tmp/pyref/bin/python ]]; then PYTHON=/tmp/pyref/bin/python; else PYTHON=python3; fi
fi
RUNS=3

die() { echo "preprocess_bench.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--runs needs a positive integer"; RUNS="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

# ---- prerequisites --------------------------------------------------------------------------------------
TIME_BIN=/usr/bin/time
if [[ ! -x "$TIME_BIN" ]]; then
    echo "preprocess_bench.sh: $TIME_BIN missing, installing the Debian 'time' package ..." >&2
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to 'apt-get install time'"
        SUDO=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not available; install GNU time so that $TIME_BIN exists"
    "${SUDO[@]}" apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq time >&2
    [[ -x "$TIME_BIN" ]] || die "$TIME_BIN still missing after apt-get install time"
fi
[[ -f "$GENERATOR" ]] || die "missing $GENERATOR (set SHARED_DIR)"
[[ -f "$BASELINE" ]] || die "missing $BASELINE (set SHARED_DIR)"
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON not found"
for mod in numpy pydicom dicom2nifti nibabel torch; do
    "$PYTHON" -c "import $mod" >/dev/null 2>&1 || die "Python module '$mod' is missing in PYTHON=$PYTHON
  (pip install pydicom numpy dicom2nifti nibabel torch; torch from PyPI is ~3 GB, CPU is enough)"
done
[[ -x "$PREPROCESS_BIN" ]] || die "Rust CLI not found or not executable: $PREPROCESS_BIN
  (build it with 'cargo build --release -p preprocess-svc' or set PREPROCESS_BIN)"

mkdir -p "$OUT_DIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/preprocess_bench.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

# ---- input archive (cached) -------------------------------------------------------------------------------
if [[ -f "$ZIP" ]]; then
    echo "using cached $ZIP" >&2
else
    echo "generating $ZIP (make_synthetic_ct.py defaults: 300 slices 512x512, about 45 s) ..." >&2
    "$PYTHON" "$GENERATOR" --zip "$ZIP.tmp.$$" >&2
    mv -f "$ZIP.tmp.$$" "$ZIP"
    printf '' > "$ZIP.args"     # same marker tools/parity/run_full.sh writes for its "default" variant
fi

# run_timed LABEL CMD... : runs CMD under GNU time; prints "wall_s maxrss_kb"; CMD output goes to $WORK/LABEL.log
run_timed() {
    local label="$1"; shift
    if ! "$TIME_BIN" -f '%e %M' -o "$WORK/$label.time" "$@" >"$WORK/$label.log" 2>&1; then
        echo "preprocess_bench.sh: '$label' failed; last lines of its output:" >&2
        tail -n 20 "$WORK/$label.log" >&2
        exit 1
    fi
    tail -n 1 "$WORK/$label.time"
}

# ---- Rust: best of RUNS -----------------------------------------------------------------------------------
RUST_WALLS=()
RUST_RSS=()
for i in $(seq 1 "$RUNS"); do
    rm -f "$WORK/rust.npy"
    res="$(run_timed "rust$i" "$PREPROCESS_BIN" tensor --recipe ctclip "$ZIP" --out "$WORK/rust.npy")"
    read -r wall rss <<<"$res"
    [[ -s "$WORK/rust.npy" ]] || die "Rust CLI exited 0 but wrote no $WORK/rust.npy"
    echo "rust run $i: wall ${wall} s, peak RSS ${rss} KiB" >&2
    RUST_WALLS+=("$wall")
    RUST_RSS+=("$rss")
done
rm -f "$WORK/rust.npy"

# ---- Python baseline: 1 run -------------------------------------------------------------------------------
echo "python baseline run ..." >&2
res="$(run_timed python "$PYTHON" "$BASELINE" "$ZIP" --workdir "$WORK/bp" --json "$WORK/baseline.json")"
read -r py_wall py_rss <<<"$res"
echo "python run: wall ${py_wall} s, peak RSS ${py_rss} KiB" >&2

# ---- table + JSON -----------------------------------------------------------------------------------------
"$PYTHON" - "$JSON_OUT" "$WORK/baseline.json" "$ZIP" "$PREPROCESS_BIN" "$py_wall" "$py_rss" \
    "${RUST_WALLS[*]}" "${RUST_RSS[*]}" <<'PY'
import json, os, platform, sys
out, bj, zip_path, rbin, py_wall, py_rss, r_walls, r_rss = sys.argv[1:9]
b = json.load(open(bj))
walls = [float(x) for x in r_walls.split()]
rss = [int(x) for x in r_rss.split()]
best = min(range(len(walls)), key=walls.__getitem__)
mib = lambda kb: kb / 1024.0
rust_wall, rust_rss_mib = walls[best], mib(rss[best])
py_wall, py_rss_mib = float(py_wall), mib(int(py_rss))
py_pipe = float(b["pipeline_s_excl_import"])
cpu = ""
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except Exception:
    pass
r = {
    "zip": os.path.abspath(zip_path), "zip_bytes": os.path.getsize(zip_path),
    "machine": {"cpus": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform()},
    "rust": {"bin": os.path.abspath(rbin), "runs": len(walls), "wall_s_runs": walls, "peak_rss_kib_runs": rss,
             "wall_s_best": rust_wall, "peak_rss_mib_of_best": round(rust_rss_mib, 1),
             "peak_rss_mib_max": round(mib(max(rss)), 1)},
    "python": {"wall_s": py_wall, "pipeline_s_excl_import": py_pipe, "peak_rss_mib": round(py_rss_mib, 1),
               "stages_s": b.get("stages"), "torch_threads": b.get("torch_threads"), "versions": b.get("versions"),
               "output_shape": b.get("output_shape")},
    "ratios": {"speedup_python_pipeline_over_rust_wall": round(py_pipe / rust_wall, 2) if rust_wall else None,
               "speedup_python_wall_over_rust_wall": round(py_wall / rust_wall, 2) if rust_wall else None,
               "memory_python_over_rust_peak_rss": round(py_rss_mib / rust_rss_mib, 2) if rust_rss_mib else None},
}
with open(out, "w") as fh:
    json.dump(r, fh, indent=1)
    fh.write("\n")
q = r["ratios"]
rows = [
    ("Rust wall s (best of %d)" % len(walls), "%.2f" % rust_wall),
    ("Rust peak RSS MiB", "%.1f" % rust_rss_mib),
    ("Python wall s", "%.2f" % py_wall),
    ("Python pipeline s (excl. import)", "%.2f" % py_pipe),
    ("Python peak RSS MiB", "%.1f" % py_rss_mib),
    ("speed-up: Python pipeline / Rust wall", "%.2fx" % q["speedup_python_pipeline_over_rust_wall"]),
    ("speed-up: Python wall / Rust wall", "%.2fx" % q["speedup_python_wall_over_rust_wall"]),
    ("memory: Python RSS / Rust RSS", "%.2fx" % q["memory_python_over_rust_peak_rss"]),
]
print("input: %s (%.1f MB), %s CPUs" % (zip_path, r["zip_bytes"] / 1e6, os.cpu_count()))
w = max(len(k) for k, _ in rows)
for k, v in rows:
    print(f"{k:<{w}}  {v:>10}")
print("python stages s:", json.dumps(b.get("stages")))
print("written:", out)
PY
