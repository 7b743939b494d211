#!/usr/bin/env bash
# Trains the DEMO ensemble bundle (committed in tools/demo_models/ensemble/, copied by scripts/setup to
# models/demo/ensemble/) on the demo model services' outputs for generated chest phantoms.
# NOT a medical model: it only lets the demo stack give meaningful decisions for phantoms.
#
# 1. generates N normal and N abnormal studies with ../shared/tools/make_synthetic_ct.py (small:
#    64 slices of 128^2; abnormal ones vary nodules / consolidation / effusion), labels them
#    (pathology: 1 for abnormal; thoracic: 1 for consolidation or effusion),
# 2. runs `<svc> predict` of the five model services with models/demo/* on each (release build),
#    writing one scores JSON per study in the ensemble's format,
# 3. augments (jittered copies, see below) and trains main + thoracic with `ensemble-svc train` (held-out split, ROC AUC printed).
# The demo ONNX graphs are generated deterministically, so the committed bundle matches them.
#
# Usage: tools/demo_models/make_demo_ensemble.sh [N]   (PYTHON: interpreter with pydicom + numpy)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
# shellcheck disable=SC1091
source .tools/env
n=${1:-16}
py=${PYTHON:-python3}
gen="$root/../shared/tools/make_synthetic_ct.py"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --locked -q -p ctclip-svc -p supervised-svc -p diffusion-svc -p mednext-svc -p fvlm-svc -p ensemble-svc
mkdir -p "$work/studies" "$work/scores"
echo "study,pathology,thoracic" > "$work/labels.csv"
common=(--slices 64 --rows 128 --cols 128 --pixel-spacing 2.8 --slice-spacing 5.0 --noise-sd 10 --kernel B70f)
for i in $(seq 1 "$n"); do
  "$py" "$gen" "${common[@]}" --seed $((1000 + i)) --zip "$work/studies/normal_$i.zip" >/dev/null
  echo "normal_$i,0,0" >> "$work/labels.csv"
  extra=(--nodules $((1 + i % 5)))
  thor=0
  case $((i % 3)) in
    0) extra+=(--consolidation); thor=1 ;;
    1) extra+=(--effusion); thor=1 ;;
  esac
  "$py" "$gen" "${common[@]}" --seed $((2000 + i)) "${extra[@]}" --zip "$work/studies/abnormal_$i.zip" >/dev/null
  echo "abnormal_$i,1,$thor" >> "$work/labels.csv"
done
for z in "$work"/studies/*.zip; do
  s=$(basename "$z" .zip)
  {
    printf '{'
    sep=""
    for m in supervised ctclip mednext fvlm diffusion; do
      printf '%s"%s": ' "$sep" "$m"
      CT_LOG=error "target/release/$m-svc" predict --bundle "models/demo/$m" "$z"
      sep=", "
    done
    printf '}\n'
  } > "$work/scores/$s.json"
  echo "scored $s"
done
# LightGBM needs about 20 rows per leaf side to split at all: each scored phantom also enters as
# $aug jittered copies (every score + N(0, 0.02), clipped to [0, 1]; fixed seed). Honest for a demo.
aug=${AUG:-5}
python3 - "$work" "$aug" <<'PY'
import csv, json, os, random, sys
work, aug = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
rows = list(csv.DictReader(open(os.path.join(work, "labels.csv"))))
out = open(os.path.join(work, "labels.csv"), "a")
for r in rows:
    src = json.load(open(os.path.join(work, "scores", r["study"] + ".json")))
    for a in range(aug):
        j = {m: {k: min(1.0, max(0.0, v + rng.gauss(0, 0.02))) for k, v in d.items()} for m, d in src.items()}
        name = f"{r['study']}_aug{a}"
        json.dump(j, open(os.path.join(work, "scores", name + ".json"), "w"))
        out.write(f"{name},{r['pathology']},{r['thoracic']}\n")
PY
out="$root/tools/demo_models/ensemble"
rm -rf "$out"
target/release/ensemble-svc train --scores-dir "$work/scores" --labels "$work/labels.csv" --label-column pathology --thoracic-label-column thoracic --min-data-in-leaf 10 --num-iterations 100 --out "$out"
cp "$work/labels.csv" "$out/training_labels.csv"
echo "wrote $out"
