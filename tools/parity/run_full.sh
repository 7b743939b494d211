#!/usr/bin/env bash
# Full-size tensor parity re-run: Python baseline (../shared/bench/baseline_preprocess.py, torch resampler)
# against our Rust CLI (`$PREPROCESS_BIN tensor --recipe ctclip <zip> --out <npy>`), on full-size synthetic
# archives made by ../shared/tools/make_synthetic_ct.py (cached under bench/out/).
#
# Usage: tools/parity/run_full.sh [--tol T] [--keep-npy] [--list] [VARIANT...]
#   VARIANT   one or more of the names printed by --list (default: all)
#   --tol     maximum allowed absolute difference (default 1e-4)
#   --keep-npy keep the two .npy tensors per variant under bench/out/parity/ (221 MB each)
# Environment:
#   PYTHON          interpreter with pydicom numpy dicom2nifti nibabel torch
#                   (default /tmp/pyref/bin/python if it exists, else python3)
#   PREPROCESS_BIN  the Rust CLI (default target/release/preprocess-svc; building it is not this script's job)
#   SHARED_DIR      the shared reference folder (default ../shared beside the checkout)
# Exit status: 0 if every variant matched, 1 if any failed, 2 on a usage/setup error.
set -euo pipefail
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SHARED_DIR="${SHARED_DIR:-$ROOT/../shared}"
GENERATOR="$SHARED_DIR/tools/make_synthetic_ct.py"
BASELINE="$SHARED_DIR/bench/baseline_preprocess.py"
COMPARE="$ROOT/tools/parity/compare_npy.py"
OUT_DIR="$ROOT/bench/out"
PREPROCESS_BIN="${PREPROCESS_BIN:-$ROOT/target/release/preprocess-svc}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x /tmp/pyref/bin/python ]]; then PYTHON=/tmp/pyref/bin/python; else PYTHON=python3; fi
fi

# variant name -> generator arguments (the default 300-slice archive is shared with bench/preprocess_bench.sh)
VARIANT_NAMES=(default thin200 thick120)
declare -A VARIANT_ARGS=(
    [default]=""                                                        # 300 x 512x512, 0.7 mm, 1.0 mm slices
    [thin200]="--slices 200 --pixel-spacing 0.6 --slice-spacing 1.0"   # finer pixels: in-plane 409 -> pad
    [thick120]="--slices 120 --slice-spacing 2.5"                       # thick slices: D upsampled 120 -> 200
)
declare -A VARIANT_ZIP=(
    [default]="synth_chest_ct_300.zip"
    [thin200]="synth_chest_ct_200_ps0.6.zip"
    [thick120]="synth_chest_ct_120_dz2.5.zip"
)

die() { echo "run_full.sh: $*" >&2; exit 2; }

TOL="1e-4"
KEEP_NPY=0
SELECTED=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tol) [[ $# -ge 2 ]] || die "--tol needs a value"; TOL="$2"; shift 2 ;;
        --keep-npy) KEEP_NPY=1; shift ;;
        --list)
            for v in "${VARIANT_NAMES[@]}"; do printf '%-10s %s  make_synthetic_ct.py %s\n' "$v" "${VARIANT_ZIP[$v]}" "${VARIANT_ARGS[$v]:-(defaults)}"; done
            exit 0 ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option: $1" ;;
        *) [[ -n "${VARIANT_ARGS[$1]+x}" ]] || die "unknown variant: $1 (see --list)"; SELECTED+=("$1"); shift ;;
    esac
done
[[ ${#SELECTED[@]} -gt 0 ]] || SELECTED=("${VARIANT_NAMES[@]}")

# ---- prerequisites --------------------------------------------------------------------------------------
[[ -f "$GENERATOR" ]] || die "missing $GENERATOR (set SHARED_DIR)"
[[ -f "$BASELINE" ]] || die "missing $BASELINE (set SHARED_DIR)"
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON not found"
for mod in numpy pydicom dicom2nifti nibabel torch; do
    if ! "$PYTHON" -c "import $mod" >/dev/null 2>&1; then
        die "Python module '$mod' is missing in PYTHON=$PYTHON. Install the reference stack:
    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install pydicom numpy dicom2nifti nibabel torch
  (torch from PyPI is ~3 GB, CPU is enough), or point PYTHON at an interpreter that has it."
    fi
done
[[ -x "$PREPROCESS_BIN" ]] || die "Rust CLI not found or not executable: $PREPROCESS_BIN
  (build it with 'cargo build --release -p preprocess-svc' or set PREPROCESS_BIN)"

mkdir -p "$OUT_DIR/parity"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/run_full.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

# generate the archive for a variant unless a cached copy made with the same arguments exists
ensure_zip() {
    local v="$1" zip="$OUT_DIR/${VARIANT_ZIP[$1]}"
    local args_file="$zip.args" want="${VARIANT_ARGS[$1]}"
    if [[ -f "$zip" && -f "$args_file" && "$(cat "$args_file")" == "$want" ]]; then
        echo "[$v] using cached $zip" >&2
    else
        echo "[$v] generating $zip (make_synthetic_ct.py ${want:-defaults}) ..." >&2
        local tmpzip="$zip.tmp.$$"
        # shellcheck disable=SC2086  # word splitting of the argument string is intended
        "$PYTHON" "$GENERATOR" --zip "$tmpzip" $want >&2
        mv -f "$tmpzip" "$zip"
        printf '%s' "$want" > "$args_file"
    fi
    printf '%s\n' "$zip"
}

json_get() {  # json_get FILE KEY -> value (top-level key)
    "$PYTHON" -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"
}

RESULTS=()
FAILED=0
for v in "${SELECTED[@]}"; do
    status="OK"; max_d="-"; mean_d="-"; n_over="-"; py_s="-"; rs_s="-"; note=""
    zip="$(ensure_zip "$v")"
    ref_npy="$OUT_DIR/parity/$v.baseline.npy"
    rs_npy="$OUT_DIR/parity/$v.rust.npy"
    rm -f "$ref_npy" "$rs_npy"

    echo "[$v] Python baseline ..." >&2
    t0=$(date +%s.%N)
    if "$PYTHON" "$BASELINE" "$zip" --save-npy "$ref_npy" --workdir "$WORK/bp_$v" --json "$WORK/$v.baseline.json" \
            >"$WORK/$v.baseline.out" 2>&1; then
        py_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
    else
        status="FAIL"; note="baseline failed: $(tail -n 1 "$WORK/$v.baseline.out")"
    fi

    if [[ "$status" == "OK" ]]; then
        echo "[$v] Rust CLI ..." >&2
        t0=$(date +%s.%N)
        if "$PREPROCESS_BIN" tensor --recipe ctclip "$zip" --out "$rs_npy" >"$WORK/$v.rust.out" 2>&1; then
            rs_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
        else
            status="FAIL"; note="rust CLI failed: $(tail -n 1 "$WORK/$v.rust.out")"
        fi
    fi

    if [[ "$status" == "OK" ]]; then
        echo "[$v] compare ..." >&2
        set +e
        "$PYTHON" "$COMPARE" "$ref_npy" "$rs_npy" --tol "$TOL" >"$WORK/$v.cmp.json" 2>"$WORK/$v.cmp.err"
        rc=$?
        set -e
        cat "$WORK/$v.cmp.json" >&2
        if [[ $rc -ne 0 ]]; then
            status="FAIL"
            if [[ $rc -ne 1 ]]; then note="compare error: $(cat "$WORK/$v.cmp.json" "$WORK/$v.cmp.err" | tail -n 1)"; fi
        fi
        if [[ -s "$WORK/$v.cmp.json" ]] && json_get "$WORK/$v.cmp.json" max_abs_diff >/dev/null 2>&1; then
            max_d=$(json_get "$WORK/$v.cmp.json" max_abs_diff)
            mean_d=$(json_get "$WORK/$v.cmp.json" mean_abs_diff)
            n_over=$(json_get "$WORK/$v.cmp.json" "n_over_$TOL")
            [[ -n "$max_d" ]] || max_d="-"
            [[ -n "$mean_d" ]] || mean_d="-"
            [[ -n "$n_over" ]] || n_over="-"
        fi
    fi
    [[ "$status" == "OK" ]] || FAILED=1
    if [[ $KEEP_NPY -eq 0 ]]; then rm -f "$ref_npy" "$rs_npy"; fi
    RESULTS+=("$(printf '%-10s %-6s %14s %14s %10s %8s %8s  %s' "$v" "$status" "$max_d" "$mean_d" "$n_over" "$py_s" "$rs_s" "$note")")
done

echo
printf '%-10s %-6s %14s %14s %10s %8s %8s  %s\n' variant status max_abs_diff mean_abs_diff "n>$TOL" python_s rust_s note
printf '%s\n' "--------------------------------------------------------------------------------------"
printf '%s\n' "${RESULTS[@]}"
if [[ $FAILED -ne 0 ]]; then
    echo "run_full.sh: FAILED (tolerance $TOL)" >&2
    exit 1
fi
echo "run_full.sh: all variants within $TOL"
