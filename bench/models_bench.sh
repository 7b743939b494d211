#!/usr/bin/env bash
# Benchmark: CPU latency per model service per study with the demo bundles (models/demo).
# For each service it runs `<svc> predict --bundle models/demo/<svc> <study>` (release build) and reads
# the stage timings the CLI logs for the prediction (queue, recipe, infer, postprocess; preprocessing and
# model load/warm-up are reported separately and not included). Studies: the committed 64-slice
# tests/fixtures/studies/chest_abnormal.zip and, when present, the 300-slice 512^2 archive cached by
# bench/preprocess_bench.sh (bench/out/synth_chest_ct_300.zip). Only prints: no thresholds.
# Writes bench/out/models_bench.json.
#
# Usage: bench/models_bench.sh        (run scripts/setup and cargo build --release first, or let it build)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source .tools/env
cargo build --release --locked -q -p ctclip-svc -p supervised-svc -p diffusion-svc -p mednext-svc -p fvlm-svc
mkdir -p bench/out
studies=(tests/fixtures/studies/chest_abnormal.zip)
[ -f bench/out/synth_chest_ct_300.zip ] && studies+=(bench/out/synth_chest_ct_300.zip)
out=bench/out/models_bench.json
echo "[" > "$out"
first=1
printf '%-12s %-28s %10s %10s %10s %12s %8s\n' model study recipe_ms infer_ms total_ms preprocess_ms rss_MiB
for s in "${studies[@]}"; do
  for m in ctclip supervised diffusion mednext fvlm; do
    log=$(mktemp)
    CT_LOG=info /usr/bin/time -f 'RSS %M' "target/release/$m-svc" predict --bundle "models/demo/$m" "$s" 2>"$log" >/dev/null
    python3 - "$log" "$m" "$(basename "$s")" "$first" >>"$out" <<'PY'
import json, re, sys
log, model, study, first = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
text = open(log).read()
text = re.sub(r"\x1b\[[0-9;]*m", "", text)
line = [l for l in text.splitlines() if "predicted" in l][-1]
t = json.loads(re.search(r"timings_ms=(\{.*?\})", line).group(1))
pre = float(re.search(r"preprocess_ms=([0-9.]+)", line).group(1))
rss = int(re.search(r"RSS (\d+)", text).group(1)) / 1024
total = sum(v for k, v in t.items() if k in ("queue", "recipe", "infer", "postprocess"))
row = {"model": model, "study": study, "timings_ms": t, "model_total_ms": total, "preprocess_ms": pre, "peak_rss_mib": rss}
print(("" if first else ",") + json.dumps(row))
print(f"{model:<12} {study:<28} {t.get('recipe', 0):10.1f} {t.get('infer', 0):10.1f} {total:10.1f} {pre:12.1f} {rss:8.0f}", file=sys.stderr)
PY
    first=0
    rm -f "$log"
  done
done 2>&1
echo "]" >> "$out"
echo "wrote $out"
