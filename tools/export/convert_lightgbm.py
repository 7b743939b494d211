#!/usr/bin/env python3
"""Convert the reference's pickled LightGBM models (joblib) into an ensemble-svc bundle.

    python3 tools/export/convert_lightgbm.py --main lightgbm_model.pkl \
        [--thoracic lightgbm_thoracic_model.pkl] [--threshold 0.59] [--thoracic-threshold 0.5] --out BUNDLE_DIR

Accepted pickles: a fitted binary `lightgbm.LGBMClassifier`, or an sklearn `Pipeline` whose last
step is one and whose other steps leave the features unchanged (None, "passthrough", an identity
`FunctionTransformer`). Anything that transforms the features or wraps the booster (scalers,
calibrators) is refused: its arithmetic would be lost in the text model.

Writes BUNDLE_DIR/{main.txt, thoracic.txt, features.toml, manifest.toml}: LightGBM text models
(`model_to_string()`, i.e. the iterations `predict_proba` uses), the feature definition (the
reference's, `ensemble-svc/reference/features.toml`, unless --features), thresholds and sha256.
Each text model is re-loaded and checked against the pickle's `predict_proba` on random rows.

It reports which of the two naming cases the pickle is in (celsus-reference §4.3):
  - "underscored": the names the reference aligned its features with (`feature_names_in_` of a
    bare LGBMClassifier, or the last step's `feature_name_`) are LightGBM's rewritten names
    (' ' -> '_'), so every feature whose built name has a space reached the model as 0.0;
  - "spaces-kept": the reference aligned with the original names (a Pipeline whose first step
    recorded them), so every feature matched;
  - "none": the model has no feature names; the reference fed its dict in insertion order.
ensemble-svc always matches names after LightGBM's rewriting (`name_matching = "lightgbm"`);
`--reproduce-reference-quirk` writes `name_matching = "exact"` instead, which reproduces the
reference's 0.0 features in the "underscored" case (ensemble-svc then also needs
--allow-unproducible-features, since those features can never be matched).

Needs: lightgbm (4.7.0, as the reference), scikit-learn, joblib, numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import joblib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FEATURES = REPO / "ensemble-svc" / "reference" / "features.toml"
# LightGBM 4.7 `Common::CheckAllowedJSON` (include/LightGBM/utils/common.h) refuses these.
LIGHTGBM_FORBIDDEN = set('",:[]{}')


class ConversionError(Exception):
    pass


def lightgbm_name(name: str) -> str:
    """The name LightGBM 4.7 stores (`Dataset::set_feature_names`: ' ' -> '_')."""
    return name.replace(" ", "_")


def is_identity_step(step) -> bool:
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return True
    from sklearn.preprocessing import FunctionTransformer

    return isinstance(step, FunctionTransformer) and step.func is None


def unwrap(obj, what: str):
    """(the LGBMClassifier, kind) of a pickle; refuses anything else."""
    import lightgbm
    from sklearn.pipeline import Pipeline

    kind = type(obj).__name__
    clf = obj
    if isinstance(obj, Pipeline):
        for name, step in obj.steps[:-1]:
            if not is_identity_step(step):
                raise ConversionError(
                    f"{what}: Pipeline step {name!r} ({type(step).__name__}) transforms the features; "
                    "only passthrough / identity steps can be converted to a LightGBM text model"
                )
        clf = obj.steps[-1][1]
        kind = f"Pipeline[{', '.join(type(s).__name__ if not isinstance(s, str) else s for _, s in obj.steps)}]"
    if not isinstance(clf, lightgbm.LGBMClassifier):
        raise ConversionError(f"{what}: the model is a {type(clf).__name__}, not a lightgbm.LGBMClassifier")
    if not hasattr(clf, "booster_"):
        raise ConversionError(f"{what}: the LGBMClassifier is not fitted")
    if getattr(clf, "n_classes_", None) != 2:
        raise ConversionError(f"{what}: a binary classifier is required (n_classes_ = {getattr(clf, 'n_classes_', None)})")
    return clf, kind


def reference_names(obj) -> list[str] | None:
    """The feature list the reference aligned with (LightGBMInference.load_model)."""
    if hasattr(obj, "feature_names_in_"):
        return [str(f) for f in obj.feature_names_in_]
    if hasattr(obj, "named_steps"):
        final = list(obj.named_steps.values())[-1]
        if hasattr(final, "feature_name_"):
            return [str(f) for f in final.feature_name_]
    return None


def naming_case(ref: list[str] | None, booster_names: list[str]) -> str:
    if ref is None:
        return "none"
    if [lightgbm_name(n) for n in ref] != booster_names:
        raise ConversionError("the pickle's feature names do not correspond to its booster's feature names")
    return "spaces-kept" if any(" " in n for n in ref) else "underscored"


def spaced_model_features(booster_names: list[str], features_toml: Path) -> list[str]:
    """Model features whose built name contains a space (the ones the reference fed as 0.0 in the
    "underscored" case). Counts the labels the feature definition lists; labels of emitted-only
    families without a list (MedNeXt) are unknown and not counted."""
    import tomllib

    spec = tomllib.loads(features_toml.read_text())
    built = set()
    for b in spec.get("block", []):
        if b.get("kind") == "scores":
            prefix = b["prefix"]
            for label in b.get("labels", []) or []:
                built.add(label if label.startswith(prefix) else prefix + label)
    spaced = {lightgbm_name(n) for n in built if " " in n}
    return [n for n in booster_names if n in spaced]


def check_text_model(clf, text: str, what: str, seed: int = 0) -> float:
    """Max |p_text - p_pickle| on random rows (must be ~0)."""
    import lightgbm

    booster = lightgbm.Booster(model_str=text)
    n = booster.num_feature()
    rng = np.random.default_rng(seed)
    x = rng.random((256, n))
    x[rng.random(x.shape) < 0.05] = 0.0
    x[:, :] *= rng.choice([1.0, 3.0], size=(1, n))  # some features beyond [0, 1] (counts)
    p_text = booster.predict(x)
    p_pickle = clf.predict_proba(x)[:, 1] if not hasattr(clf, "feature_names_in_") else None
    if p_pickle is None:
        import pandas as pd

        p_pickle = clf.predict_proba(pd.DataFrame(x, columns=list(clf.feature_names_in_)))[:, 1]
    diff = float(np.max(np.abs(p_text - p_pickle)))
    if diff > 1e-12:
        raise ConversionError(f"{what}: the text model differs from the pickle's predict_proba by {diff}")
    return diff


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def convert_one(pkl: Path, what: str):
    obj = joblib.load(pkl)
    clf, kind = unwrap(obj, what)
    text = clf.booster_.model_to_string()
    booster_names = clf.booster_.feature_name()
    case = naming_case(reference_names(obj), booster_names)
    diff = check_text_model(clf, text, what)
    return {"pickle": pkl, "kind": kind, "text": text, "names": booster_names, "case": case, "check_max_abs_diff": diff}


def convert(main: Path, out: Path, thoracic: Path | None = None, threshold: float = 0.59, thoracic_threshold: float = 0.5,
            features: Path = DEFAULT_FEATURES, reproduce_quirk: bool = False, version: str = "converted") -> dict:
    for name, t in (("--threshold", threshold), ("--thoracic-threshold", thoracic_threshold)):
        if not 0.0 <= t <= 1.0:
            raise ConversionError(f"{name} {t} is not within [0, 1]")
    m = convert_one(main, "main")
    t = convert_one(thoracic, "thoracic") if thoracic else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "main.txt").write_text(m["text"])
    if t:
        (out / "thoracic.txt").write_text(t["text"])
    (out / "features.toml").write_text(features.read_text())

    affected = spaced_model_features(m["names"], features)
    matching = "exact" if (reproduce_quirk and m["case"] == "underscored") else "lightgbm"
    notes = []
    if m["case"] == "underscored":
        notes.append(f"the reference fed {len(affected)} feature(s) with spaces in their names as 0.0 (LightGBM rewrote the names); "
                     + ("name_matching = \"exact\" reproduces that" if matching == "exact" else "ensemble-svc feeds their real values"))
    if m["case"] == "none":
        notes.append("the model has no feature names: the reference fed its feature dict by position")
    thoracic_features = "main"
    if t and t["names"] != m["names"]:
        notes.append("the thoracic model lists other features than the main model; as in the reference it is fed the "
                     "vector aligned to the main model's list (manifest [thoracic] features = \"main\")")
        if len(t["names"]) != len(m["names"]):
            notes.append("the thoracic model expects a different number of features: ensemble-svc will refuse it "
                         "unless [thoracic] features is set to \"own\"")

    files = ["main.txt"] + (["thoracic.txt"] if t else []) + ["features.toml"]
    lines = [
        "# ensemble-svc bundle written by tools/export/convert_lightgbm.py",
        "format = 1",
        "",
        "[ensemble]",
        f"version = {toml_str(version)}",
        "demo = false",
        f"description = {toml_str('converted from ' + m['pickle'].name + (' and ' + t['pickle'].name if t else ''))}",
        "",
        "[main]",
        'file = "main.txt"',
        f"threshold = {threshold!r}",
        "",
    ]
    if t:
        lines += ["[thoracic]", 'file = "thoracic.txt"', f"threshold = {thoracic_threshold!r}", f'features = "{thoracic_features}"', ""]
    lines += ["[features]", 'file = "features.toml"', 'missing = "zero"', f'name_matching = "{matching}"', ""]
    lines += [
        "[source]",
        f"main_pickle = {toml_str(m['pickle'].name)}",
        f"main_pickle_sha256 = {toml_str(sha256(m['pickle']))}",
        f"main_kind = {toml_str(m['kind'])}",
        f"naming = {toml_str(m['case'])}",
        f"reference_zero_features = {len(affected) if m['case'] == 'underscored' else 0}",
    ]
    if t:
        lines += [
            f"thoracic_pickle = {toml_str(t['pickle'].name)}",
            f"thoracic_pickle_sha256 = {toml_str(sha256(t['pickle']))}",
            f"thoracic_kind = {toml_str(t['kind'])}",
            f"thoracic_naming = {toml_str(t['case'])}",
        ]
    import lightgbm

    lines += [f"lightgbm = {toml_str(lightgbm.__version__)}", "", "[files]"]
    lines += [f"{toml_str(f)} = {toml_str(sha256(out / f))}" for f in files]
    (out / "manifest.toml").write_text("\n".join(lines) + "\n")
    return {
        "bundle": str(out),
        "naming": m["case"],
        "thoracic_naming": t["case"] if t else None,
        "main_kind": m["kind"],
        "thoracic_kind": t["kind"] if t else None,
        "n_features": len(m["names"]),
        "reference_zero_features": affected if m["case"] == "underscored" else [],
        "name_matching": matching,
        "max_abs_diff_text_vs_pickle": max(m["check_max_abs_diff"], t["check_max_abs_diff"] if t else 0.0),
        "notes": notes,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--main", required=True, type=Path, help="joblib pickle of the main model")
    ap.add_argument("--thoracic", type=Path, help="joblib pickle of the thoracic model")
    ap.add_argument("--threshold", type=float, default=0.59, help="main threshold (default 0.59, as deployed)")
    ap.add_argument("--thoracic-threshold", type=float, default=0.5, help="thoracic threshold (default 0.5)")
    ap.add_argument("--features", type=Path, default=DEFAULT_FEATURES, help="feature definition copied into the bundle")
    ap.add_argument("--reproduce-reference-quirk", action="store_true",
                    help='write name_matching = "exact" when the pickle is in the "underscored" case')
    ap.add_argument("--version", default="converted", help="bundle version written to the manifest")
    ap.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    a = ap.parse_args(argv)
    try:
        r = convert(a.main, a.out, a.thoracic, a.threshold, a.thoracic_threshold, a.features, a.reproduce_reference_quirk, a.version)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    case_text = {
        "underscored": "underscored names (bare LGBMClassifier: the reference fed features with spaces as 0.0)",
        "spaces-kept": "names with spaces kept (Pipeline: the reference matched every feature)",
        "none": "no feature names (the reference fed its features by position)",
    }
    print(f"naming case: {case_text[r['naming']]}", file=sys.stderr)
    for n in r["notes"]:
        print(f"note: {n}", file=sys.stderr)
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
