"""Tests of tools/export/convert_lightgbm.py on pickles made here with the reference's API
(joblib dumps of a bare LGBMClassifier and of sklearn Pipelines fitted on pandas DataFrames).

Run:  python -m unittest discover -s tools/export/tests -v     (or: python -m pytest tools/export/tests)
Needs: tools/export/tests/requirements.txt (lightgbm 4.7.0, scikit-learn, pandas, joblib, numpy).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

import joblib
import lightgbm
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

SCRIPT = Path(__file__).resolve().parents[1] / "convert_lightgbm.py"
spec = importlib.util.spec_from_file_location("convert_lightgbm", SCRIPT)
conv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conv)

COLUMNS = ["supervised_cancer", "ctclip_Pulmonary nodule", "okhr_Lung nodule", "ctclip_mean_probability",
           "ctclip_Postoperative changes (lobectomy or pneumonectomy)", "kolyan_cancer"]


def data(n=300, seed=0, columns=COLUMNS):
    rng = np.random.default_rng(seed)
    x = rng.random((n, len(columns)))
    y = (x[:, 1] + x[:, 2] + 0.3 * rng.normal(size=n) > 1.0).astype(int)
    return pd.DataFrame(x, columns=columns), y


def clf():
    return lightgbm.LGBMClassifier(n_estimators=15, num_leaves=5, min_child_samples=5, verbose=-1, random_state=0)


class ConvertTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def dump(self, obj, name):
        p = self.dir / name
        joblib.dump(obj, p)
        return p

    def check_bundle(self, out: Path, model, df):
        m = tomllib.loads((out / "manifest.toml").read_text())
        self.assertEqual(m["format"], 1)
        for f, h in m["files"].items():
            self.assertEqual(hashlib.sha256((out / f).read_bytes()).hexdigest(), h, f)
        self.assertIn("features.toml", m["files"])
        text = (out / m["main"]["file"]).read_text()
        names = next(line for line in text.splitlines() if line.startswith("feature_names=")).split("=", 1)[1].split(" ")
        self.assertEqual(names, [c.replace(" ", "_") for c in df.columns], "LightGBM's rewritten names")
        booster = lightgbm.Booster(model_str=text)
        np.testing.assert_array_equal(booster.predict(df.to_numpy()), model.predict_proba(df)[:, 1])
        return m

    def test_bare_classifier_is_the_underscored_case(self):
        df, y = data()
        model = clf().fit(df, y)
        r = conv.convert(self.dump(model, "main.pkl"), self.dir / "b")
        self.assertEqual(r["naming"], "underscored")
        self.assertEqual(r["name_matching"], "lightgbm")
        self.assertEqual(sorted(r["reference_zero_features"]),
                         sorted(["ctclip_Pulmonary_nodule", "okhr_Lung_nodule", "ctclip_Postoperative_changes_(lobectomy_or_pneumonectomy)"]))
        m = self.check_bundle(self.dir / "b", model, df)
        self.assertEqual(m["main"]["threshold"], 0.59)
        self.assertNotIn("thoracic", m)
        self.assertEqual(m["features"]["name_matching"], "lightgbm")
        self.assertEqual(m["source"]["naming"], "underscored")
        self.assertEqual(m["source"]["reference_zero_features"], 3)
        self.assertEqual((self.dir / "b" / "features.toml").read_text(), conv.DEFAULT_FEATURES.read_text())
        q = conv.convert(self.dir / "main.pkl", self.dir / "q", reproduce_quirk=True)
        self.assertEqual(q["name_matching"], "exact")

    def test_pipeline_with_a_name_recording_first_step_keeps_spaces(self):
        df, y = data()
        pipe = Pipeline([("identity", FunctionTransformer()), ("clf", clf())]).fit(df, y)
        self.assertIn(" ", pipe.feature_names_in_[1])
        r = conv.convert(self.dump(pipe, "pipe.pkl"), self.dir / "b")
        self.assertEqual(r["naming"], "spaces-kept")
        self.assertEqual(r["reference_zero_features"], [])
        self.check_bundle(self.dir / "b", pipe, df)

    def test_pipeline_with_passthrough_first_step_is_underscored(self):
        df, y = data()
        pipe = Pipeline([("noop", "passthrough"), ("clf", clf())]).fit(df, y)
        r = conv.convert(self.dump(pipe, "pipe.pkl"), self.dir / "b")
        self.assertEqual(r["naming"], "underscored")
        self.assertTrue(r["main_kind"].startswith("Pipeline["))

    def test_model_without_names(self):
        df, y = data()
        model = clf().fit(df.to_numpy(), y)
        r = conv.convert(self.dump(model, "np.pkl"), self.dir / "b")
        self.assertEqual(r["naming"], "none")
        self.assertTrue(any("by position" in n for n in r["notes"]))

    def test_thoracic_model_thresholds_and_differing_lists(self):
        df, y = data()
        main = clf().fit(df, y)
        other = df[list(reversed(COLUMNS))]
        thoracic = clf().fit(other, 1 - y)
        r = conv.convert(self.dump(main, "m.pkl"), self.dir / "b", self.dump(thoracic, "t.pkl"), threshold=0.42, thoracic_threshold=0.6)
        self.assertTrue(any("thoracic model lists other features" in n for n in r["notes"]))
        m = self.check_bundle(self.dir / "b", main, df)
        self.assertEqual((m["main"]["threshold"], m["thoracic"]["threshold"], m["thoracic"]["features"]), (0.42, 0.6, "main"))
        t = lightgbm.Booster(model_str=(self.dir / "b" / "thoracic.txt").read_text())
        np.testing.assert_array_equal(t.predict(other.to_numpy()), thoracic.predict_proba(other)[:, 1])

    def test_refuses_what_a_text_model_cannot_hold(self):
        df, y = data()
        scaled = Pipeline([("scale", StandardScaler()), ("clf", clf())]).fit(df, y)
        with self.assertRaisesRegex(conv.ConversionError, "transforms the features"):
            conv.convert(self.dump(scaled, "s.pkl"), self.dir / "b")
        y3 = np.arange(len(y)) % 3
        with self.assertRaisesRegex(conv.ConversionError, "binary"):
            conv.convert(self.dump(clf().fit(df, y3), "m3.pkl"), self.dir / "b")
        with self.assertRaisesRegex(conv.ConversionError, "not a lightgbm.LGBMClassifier"):
            conv.convert(self.dump(StandardScaler().fit(df), "x.pkl"), self.dir / "b")
        with self.assertRaisesRegex(conv.ConversionError, "within"):
            conv.convert(self.dump(clf().fit(df, y), "m.pkl"), self.dir / "b", threshold=1.5)

    def test_command_line(self):
        df, y = data()
        main = self.dump(clf().fit(df, y), "lightgbm_model.pkl")
        thor = self.dump(clf().fit(df, 1 - y), "lightgbm_thoracic_model.pkl")
        out = self.dir / "bundle"
        p = subprocess.run([sys.executable, str(SCRIPT), "--main", str(main), "--thoracic", str(thor), "--threshold", "0.59",
                            "--thoracic-threshold", "0.5", "--out", str(out)], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("naming case: underscored", p.stderr)
        r = json.loads(p.stdout)
        self.assertEqual((r["naming"], r["thoracic_naming"], r["n_features"]), ("underscored", "underscored", len(COLUMNS)))
        self.assertEqual(sorted(x.name for x in out.iterdir()), ["features.toml", "main.txt", "manifest.toml", "thoracic.txt"])
        bad = self.dump(Pipeline([("scale", StandardScaler()), ("clf", clf())]).fit(df, y), "bad.pkl")
        p = subprocess.run([sys.executable, str(SCRIPT), "--main", str(bad), "--out", str(self.dir / "x")], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)
        self.assertIn("transforms the features", p.stderr)


if __name__ == "__main__":
    unittest.main()
