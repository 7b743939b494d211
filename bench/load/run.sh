#!/usr/bin/env bash
# Load benchmark of the running local stack: K concurrent clients x M studies against POST /predict.
# Prints throughput, p50/p95 latency, the HTTP 429 count, peak RSS (VmHWM) of every stack process,
# and the time per study spent outside preprocessing compute and model compute (formula and what it
# includes: bench/load/README.md). A benchmark, not a test: it prints figures and checks no threshold.
#
# Usage: bench/load/run.sh [--clients K] [--studies M] [--warmup N] [--study ZIP] [--json OUT]
#                          [--url URL] [--admin-url URL] [loadbench.py options ...]
#   --clients K    concurrent clients (default 1)
#   --studies M    studies per client (default 5)
#   --study ZIP    archive to send (default bench/out/synth_chest_ct_300.zip, the 300-slice 512x512
#                  study of bench/preprocess_bench.sh; generated when missing)
#   --json OUT     figures as JSON (default bench/out/load_bench_k<K>_m<M>.json)
# Start the stack first, in another terminal: deploy/local/up
# Environment:
#   CT_BENCH_URL        gateway URL (default http://127.0.0.1:8000)
#   CT_BENCH_ADMIN_URL  gateway admin URL with /metrics (default http://127.0.0.1:9100)
#   PREPROCESS_BIN      preprocess-svc binary for the compute calibration (default target/release/preprocess-svc)
#   PYTHON              interpreter with numpy + pydicom, only to generate the study
#                       (default /tmp/pyref/bin/python if it exists, else python3)
#   SHARED_DIR          the shared folder with tools/make_synthetic_ct.py (default ../shared)
set -euo pipefail
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SHARED_DIR="${SHARED_DIR:-$ROOT/../shared}"
OUT_DIR="$ROOT/bench/out"
DRIVER="$ROOT/bench/load/loadbench.py"
URL="${CT_BENCH_URL:-http://127.0.0.1:8000}"
ADMIN_URL="${CT_BENCH_ADMIN_URL:-http://127.0.0.1:9100}"
PREPROCESS_BIN="${PREPROCESS_BIN:-$ROOT/target/release/preprocess-svc}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x /tmp/pyref/bin/python ]]; then PYTHON=/tmp/pyref/bin/python; else PYTHON=python3; fi
fi
CLIENTS=1
STUDIES=5
STUDY=""
JSON=""
EXTRA=()

die() { echo "bench/load/run.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --clients|-k) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer"; CLIENTS="$2"; shift 2 ;;
        --studies|-m) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer"; STUDIES="$2"; shift 2 ;;
        --study) [[ $# -ge 2 ]] || die "--study needs a path"; STUDY="$2"; shift 2 ;;
        --json) [[ $# -ge 2 ]] || die "--json needs a path"; JSON="$2"; shift 2 ;;
        --url) [[ $# -ge 2 ]] || die "--url needs a URL"; URL="$2"; shift 2 ;;
        --admin-url) [[ $# -ge 2 ]] || die "--admin-url needs a URL"; ADMIN_URL="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) EXTRA+=("$1"); shift ;;
    esac
done

command -v python3 >/dev/null 2>&1 || die "python3 is needed (standard library only)"

# ---- is the stack up? ---------------------------------------------------------------------------
if ! python3 - "$URL" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/health", timeout=5) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
then
    die "the stack is not up: GET $URL/health did not answer 200.
  Start it first in another terminal:  deploy/local/up
  (or point CT_BENCH_URL / --url at a running gateway)"
fi

# ---- the study (cached; the same file bench/preprocess_bench.sh uses) -------------------------------
if [[ -z "$STUDY" ]]; then
    STUDY="$OUT_DIR/synth_chest_ct_300.zip"
    if [[ ! -f "$STUDY" ]]; then
        GENERATOR="$SHARED_DIR/tools/make_synthetic_ct.py"
        [[ -f "$GENERATOR" ]] || die "missing $GENERATOR (set SHARED_DIR) to generate $STUDY"
        "$PYTHON" -c "import numpy, pydicom" >/dev/null 2>&1 \
            || die "PYTHON=$PYTHON lacks numpy/pydicom to generate the study (pip install numpy pydicom, or pass --study)"
        mkdir -p "$OUT_DIR"
        echo "generating $STUDY (make_synthetic_ct.py defaults: 300 slices 512x512, about 45 s) ..." >&2
        "$PYTHON" "$GENERATOR" --zip "$STUDY.tmp.$$" >&2
        mv -f "$STUDY.tmp.$$" "$STUDY"
        printf '' > "$STUDY.args"
    fi
fi
[[ -f "$STUDY" ]] || die "study $STUDY not found"
if [[ -z "$JSON" ]]; then
    mkdir -p "$OUT_DIR"
    JSON="$OUT_DIR/load_bench_k${CLIENTS}_m${STUDIES}.json"
fi
[[ -x "$PREPROCESS_BIN" ]] || echo "warning: $PREPROCESS_BIN missing: preprocess compute (and so the overhead) will be n/a;
  build it with 'cargo build --release -p preprocess-svc' or set PREPROCESS_BIN" >&2

exec python3 "$DRIVER" --url "$URL" --admin-url "$ADMIN_URL" --study "$STUDY" \
    --clients "$CLIENTS" --studies "$STUDIES" --preprocess-bin "$PREPROCESS_BIN" --json "$JSON" "${EXTRA[@]}"
