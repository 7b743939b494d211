#!/usr/bin/env python3
"""Makes ensemble-svc's committed test fixtures (ensemble-svc/tests/fixtures/):

- parity/: a bundle converted (tools/export/convert_lightgbm.py) from two bare LGBMClassifier
  pickles trained here on a pandas DataFrame of reference features whose column names contain
  spaces (the reference's situation: LightGBM stores them with '_'), plus cases.json: random score
  files with what Python computes for them with the reference rules (tools/ensemble/reference_rules.py)
  and `predict_proba`:
    expected           names matched after LightGBM's rewriting, missing -> 0.0 (ensemble-svc's default)
    expected_nan       the same with missing -> NaN (the `nan` policy)
    expected_quirk     names compared exactly, missing -> 0.0 (the reference with a bare classifier)
- golden/: one fixed score file and its full feature dict (names, order, values).

Run (needs lightgbm==4.7.0, scikit-learn, pandas, joblib, numpy):
    python3 tools/ensemble/make_fixtures.py [--out ensemble-svc/tests/fixtures]
The output is deterministic for a given lightgbm/numpy version.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import joblib
import lightgbm
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import reference_rules as R  # noqa: E402


def load_converter():
    spec = importlib.util.spec_from_file_location("convert_lightgbm", REPO / "tools" / "export" / "convert_lightgbm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# labels carrying the signal: many of them have spaces in their feature names
MAIN_SIGNAL = {
    ("ctclip", "Pulmonary nodule"): 1.6, ("ctclip", "Pleural effusion"): 1.4, ("ctclip", "Ground-glass opacity"): 1.2,
    ("fvlm", "Lung nodule"): 1.6, ("fvlm", "Lung opacity"): 1.3, ("fvlm", "Pleural effusion"): 1.0,
    ("mednext", "cancer"): 0.5, ("diffusion", "diffusion_classifier_max_probability"): 0.3,
}
THORACIC_SIGNAL = {
    ("fvlm", "Cardiomegaly"): 1.6, ("fvlm", "Pericardial effusion"): 1.4, ("ctclip", "Cardiac chamber enlargement"): 1.4,
    ("ctclip", "Pericardial effusion"): 1.0, ("fvlm", "Aortic aneurysm"): 1.0, ("supervised", "aorta_pathology"): 0.8,
}
LABELS = {"supervised": R.MOSMED, "ctclip": R.CTCLIP, "mednext": R.MEDNEXT, "fvlm": R.FVLM}


def study(rng, y: int, yt: int) -> dict:
    s = {}
    for model, labels in LABELS.items():
        s[model] = {}
        for label in labels:
            z = rng.normal(-1.0, 1.0)
            z += y * MAIN_SIGNAL.get((model, label), 0.0) * 0.8 + yt * THORACIC_SIGNAL.get((model, label), 0.0) * 0.8
            s[model][label] = float(sigmoid(z))
    p = sigmoid(rng.normal(-1.0 + 0.4 * y + rng.normal(0.0, 1.0), 0.8, size=216))
    s["diffusion"] = {
        "diffusion_classifier_mean_probability": float(np.mean(p)),
        "diffusion_classifier_max_probability": float(np.max(p)),
        "diffusion_classifier_std_probability": float(np.std(p)),
    }
    return s


def train(rng, n=600):
    ys = rng.integers(0, 2, n)
    yts = rng.integers(0, 2, n)
    rows = []
    for y, yt in zip(ys, yts):
        s = study(rng, int(y), int(yt))
        if rng.random() < 0.25:  # heart/aorta not segmented: those okhr_ features absent (NaN in the frame)
            s["fvlm"] = {k: v for k, v in s["fvlm"].items() if k in R.FVLM_LUNG}
        rows.append(R.build_features(s))
    df = pd.DataFrame(rows)  # column names with spaces, as the reference's feature dict
    assert any(" " in c for c in df.columns)
    params = dict(n_estimators=40, num_leaves=6, learning_rate=0.05, min_child_samples=10, random_state=0, verbose=-1)
    main = lightgbm.LGBMClassifier(**params).fit(df, ys)
    thoracic = lightgbm.LGBMClassifier(**params).fit(df, yts)
    assert list(main.feature_names_in_) == [c.replace(" ", "_") for c in df.columns], "LightGBM rewrote the names"
    return main, thoracic


def variants(rng):
    """Score files for the cases: (name, scores)."""
    out = []
    for i in range(12):
        s = study(rng, int(rng.integers(0, 2)), int(rng.integers(0, 2)))
        name = "full"
        if i == 1:
            s["fvlm"] = {k: v for k, v in s["fvlm"].items() if k in R.FVLM_LUNG}
            name = "fvlm_lung_only"
        elif i == 2:
            del s["mednext"]
            name = "no_mednext"
        elif i == 3:
            del s["fvlm"]
            name = "no_fvlm"
        elif i == 4:
            del s["diffusion"]
            name = "no_diffusion"
        elif i == 5:
            s["mednext"] = {("kolyan_" + k if j % 2 else k): v for j, (k, v) in enumerate(s["mednext"].items())}
            s["supervised"]["not_in_the_reference"] = 0.99
            name = "prefixed_labels_and_extra_label"
        elif i == 6:
            del s["ctclip"]["Pneumothorax"]
            name = "ctclip_label_missing"
        elif i == 7:
            for g in ("pleural", "airways"):
                for m in R.GROUPS[g]:
                    s["ctclip"][m] = 0.5
            name = "group_members_at_0.5"
        elif i == 8:
            for model in ("mednext", "fvlm", "ctclip"):
                s[model] = {k: 0.25 for k in s[model]}
            name = "all_ties"
        elif i == 9:
            s = {"ctclip": s["ctclip"], "supervised": s["supervised"]}
            name = "only_ctclip_and_supervised"
        out.append((f"{i:02d}_{name}", s))
    return out


def predict(clf, names, values):
    df = pd.DataFrame([values], columns=names, dtype=np.float64)
    return float(clf.predict_proba(df)[0, 1])


def expected(main, thoracic, names, feats, rewrite: bool, fill: float):
    values, missing = R.align(feats, names, rewrite=rewrite, fill=fill)
    # the reference: the thoracic model gets the frame aligned to the main model's list
    return {
        "probability_of_pathology": predict(main, names, values),
        "probability_of_pathology_thoracic": predict(thoracic, list(thoracic.feature_names_in_), values),
        "top_pathologies": R.top_pathologies(names, values),
        "missing_features": missing,
    }


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "ensemble-svc" / "tests" / "fixtures")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(20261201)
    main, thoracic = train(rng)
    names = [str(n) for n in main.feature_names_in_]
    conv = load_converter()
    parity = a.out / "parity"
    with tempfile.TemporaryDirectory() as tmp:
        mp, tp = Path(tmp) / "lightgbm_model.pkl", Path(tmp) / "lightgbm_thoracic_model.pkl"
        joblib.dump(main, mp)
        joblib.dump(thoracic, tp)
        report = conv.convert(mp, parity, tp, threshold=0.59, thoracic_threshold=0.5, version="parity-fixture")
    assert report["naming"] == "underscored", report
    cases = []
    for name, scores in variants(rng):
        feats = R.build_features(scores)
        cases.append({
            "name": name,
            "scores": scores,
            "expected": expected(main, thoracic, names, feats, rewrite=True, fill=0.0),
            "expected_nan": expected(main, thoracic, names, feats, rewrite=True, fill=float("nan")),
            "expected_quirk": expected(main, thoracic, names, feats, rewrite=False, fill=0.0),
        })
    meta = {
        "made_by": "tools/ensemble/make_fixtures.py",
        "lightgbm": lightgbm.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "converter_report": {k: v for k, v in report.items() if k != "bundle"},
    }
    text = json.dumps({"meta": meta, "cases": cases})
    (parity / "cases.json").write_text(text + "\n")

    golden = a.out / "golden"
    golden.mkdir(parents=True, exist_ok=True)
    gscores = cases[0]["scores"]
    (golden / "scores.json").write_text(json.dumps(gscores, indent=1) + "\n")
    feats = R.build_features(gscores)
    values, _ = R.align(feats, names, rewrite=True)
    (golden / "features.json").write_text(json.dumps({
        "made_by": "tools/ensemble/make_fixtures.py (reference rules, numpy float64)",
        "built": [[k, v] for k, v in feats.items()],
        "aligned_to_parity_main": [[n, v] for n, v in zip(names, values)],
    }, indent=1) + "\n")
    print(json.dumps({"cases": len(cases), "features": len(names), "naming": report["naming"],
                      "reference_zero_features": len(report["reference_zero_features"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main_())
