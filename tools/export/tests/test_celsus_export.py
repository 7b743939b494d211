"""Torch-free tests of the exporter package (tools/export/celsus_export): manifest writing and
hashing, the bundle contracts against the Rust adapters' sources, command-line parsing, `all`'s
file resolution, the report table, the service-log parsing and the verification vocabulary.

The exports themselves need torch, the original repository and the weights; they are verified by
running the exporter (tools/export/README.md), not here.

Run:  python -m unittest discover -s tools/export/tests -v
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

EXPORT = Path(__file__).resolve().parents[1]
REPO = EXPORT.parents[1]
sys.path.insert(0, str(EXPORT))

from celsus_export import bundle, cli, contracts, random_weights, reference, rust  # noqa: E402


def rust_str_array(path: Path, const: str) -> list[str]:
    """The string literals of `pub const NAME: [&str; N] = [...]` in a Rust source file."""
    text = path.read_text()
    m = re.search(rf"pub const {const}: \[&str; \d+\] = \[(.*?)\];", text, re.S)
    assert m, f"{const} not found in {path}"
    return re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))


class ContractTest(unittest.TestCase):
    def test_labels_equal_the_services_constants(self):
        self.assertEqual(contracts.CTCLIP_PATHOLOGIES, rust_str_array(REPO / "ctclip-svc/src/lib.rs", "PATHOLOGIES"))
        self.assertEqual(contracts.MOSMED_PATHOLOGIES, rust_str_array(REPO / "supervised-svc/src/lib.rs", "MOSMED_PATHOLOGIES"))
        self.assertEqual(contracts.DIFFUSION_LABELS, rust_str_array(REPO / "diffusion-svc/src/lib.rs", "LABELS"))
        self.assertEqual(len(contracts.FVLM_ITEMS), 18)
        self.assertEqual(len({k for _, k in contracts.FVLM_ITEMS}), 18)
        self.assertTrue(all(o in contracts.FVLM_ORGANS for o, _ in contracts.FVLM_ITEMS))

    def test_io_specs_follow_the_bundle_document(self):
        ins, outs = contracts.io_spec("ctclip", n_labels=55)
        self.assertEqual(ins, [{"name": "image", "dtype": "float32", "shape": [1, 1, 240, 480, 480]}])
        self.assertEqual(outs, [{"name": "logits", "dtype": "float32", "shape": [1, 55, 2]}])
        ins, outs = contracts.io_spec("supervised", n_labels=15)
        self.assertEqual(outs[0]["shape"], [1, 15])
        ins, outs = contracts.io_spec("diffusion", n_labels=2)
        self.assertEqual([(t["name"], t["dtype"], t["shape"]) for t in ins],
                         [("image", "float32", [-1, 1, 256, 256]), ("timesteps", "int64", [-1])])
        self.assertEqual(outs[0]["shape"], [-1, 2])
        ins, outs = contracts.io_spec("mednext", n_labels=22, input_dtype="float16", roi=(320, 320, 224))
        self.assertEqual((ins[0]["dtype"], ins[0]["shape"], outs[0]["shape"]), ("float16", [1, 1, 320, 320, 224], [1, 22]))
        ins, outs = contracts.io_spec("fvlm", n_labels=18)
        self.assertEqual([t["name"] for t in ins], ["image", "organ_mask", "organ"])
        self.assertEqual(ins[2], {"name": "organ", "dtype": "int64", "shape": [1]})
        self.assertEqual(outs[0]["shape"], [1, 18, 2])
        with self.assertRaises(ValueError):
            contracts.io_spec("nope", n_labels=1)

    def test_labels_sections(self):
        self.assertEqual(contracts.labels_section("ctclip", ["a"])["positive_index"], 0)
        self.assertEqual(contracts.labels_section("fvlm", ["a"])["positive_index"], 1)
        self.assertEqual(contracts.labels_section("diffusion", [])["names"], contracts.DIFFUSION_LABELS)
        self.assertEqual(contracts.labels_section("mednext", ["n"], "softmax")["activation"], "softmax")
        with self.assertRaises(ValueError):
            contracts.labels_section("mednext", ["n"], "relu")

    def test_recipes_match_the_demo_bundles_parameters(self):
        # the values docs/model-bundle.md documents (and mednext-svc/diffusion-svc/fvlm-svc parse)
        self.assertEqual(contracts.RECIPES["diffusion"], {"kind": "diffusion", "slice_start": 12, "slice_end": 228,
                                                          "size": [256, 256], "batch_size": 16, "timestep": 0})
        self.assertEqual(contracts.RECIPES["mednext"]["spacing_mm"], [1.0, 1.0, 1.5])
        self.assertEqual(contracts.RECIPES["fvlm"]["organ_size"], [112, 288, 352])
        doc = (REPO / "docs/model-bundle.md").read_text()
        for key in ("slice_start = 12", "roi_margin = [5, 20, 20]", "min_pad = [112, 256, 352]", "hu_window = [-1150.0, 350.0]"):
            self.assertIn(key, doc)


class ManifestTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def manifest(self, model="fvlm", random_weights=False):
        names = [k for _, k in contracts.FVLM_ITEMS] if model == "fvlm" else contracts.CTCLIP_PATHOLOGIES
        ins, outs = contracts.io_spec(model, n_labels=len(names))
        extra = {"fvlm": {"organs": contracts.FVLM_ORGANS, "mask_ids": contracts.FVLM_MASK_IDS,
                          "item_organs": [o for o, _ in contracts.FVLM_ITEMS]}} if model == "fvlm" else {}
        (self.dir / "ck.pt").write_bytes(b"checkpoint bytes")
        prov = bundle.provenance(tool=cli.TOOL, tool_version="1.0.0", model=model, checkpoints={"checkpoint": self.dir / "ck.pt"},
                                 opset=18, repo_commit="abc", versions={"torch_version": "2.15"}, notes=["a \"quoted\" note"])
        return cli.build_manifest(model=model, version="v1", description="desc", random_weights=random_weights, inputs=ins,
                                  outputs=outs, labels=contracts.labels_section(model, names), recipe=dict(contracts.RECIPES[model]),
                                  extra=extra, provenance=prov,
                                  verification={"max_abs_diff": 2.5e-7, "tolerance": 1e-4, "passed": True, "skip": None, "nested": {"x": 1}})

    def test_written_manifest_round_trips_and_hashes(self):
        out = bundle.begin_bundle(self.dir / "b")
        (out / "model.onnx").write_bytes(b"\x08\x0a fake onnx")
        path = bundle.write_manifest(out, self.manifest())
        m = tomllib.loads(path.read_text())
        self.assertEqual(m["format"], 1)
        self.assertEqual(m["files"], {"model.onnx": hashlib.sha256(b"\x08\x0a fake onnx").hexdigest()})
        self.assertEqual(m["model"], {"name": "fvlm", "version": "v1", "demo": False, "description": "desc"})
        self.assertEqual([t["name"] for t in m["inputs"]], ["image", "organ_mask", "organ"])
        self.assertEqual(m["outputs"][0]["shape"], [1, 18, 2])
        self.assertEqual(len(m["labels"]["names"]), 18)
        self.assertEqual(m["labels"]["names"][2], "Lung nodule")
        self.assertEqual(m["fvlm"]["item_organs"][-1], "aorta")
        self.assertEqual(m["recipe"]["hu_window"], [-1150.0, 350.0])
        self.assertEqual(m["provenance"]["checkpoint"], "ck.pt")
        self.assertEqual(m["provenance"]["checkpoint_sha256"], hashlib.sha256(b"checkpoint bytes").hexdigest())
        self.assertEqual(m["provenance"]["onnx_opset"], 18)
        self.assertEqual(m["provenance"]["notes"], ['a "quoted" note'])
        self.assertEqual(m["verification"], {"max_abs_diff": 2.5e-7, "tolerance": 1e-4, "passed": True})
        self.assertEqual(bundle.verify_files(out, m), [])
        (out / "model.onnx").write_bytes(b"changed")
        self.assertEqual(bundle.verify_files(out, m), ["model.onnx"])

    def test_bundle_is_incomplete_until_the_manifest_is_written(self):
        out = bundle.begin_bundle(self.dir / "b")
        (out / "model.onnx").write_bytes(b"x")
        bundle.write_manifest(out, self.manifest("ctclip"))
        self.assertTrue((out / "manifest.toml").exists())
        (out / "notes.txt").write_text("kept")
        bundle.begin_bundle(out)
        self.assertFalse((out / "manifest.toml").exists())
        self.assertFalse((out / "model.onnx").exists(), "the graph about to be rewritten is removed first")
        self.assertTrue((out / "notes.txt").exists())
        with self.assertRaises(FileNotFoundError):
            bundle.write_manifest(out, self.manifest("ctclip"))
        self.assertFalse((out / "manifest.toml").exists())

    def test_random_weights_are_marked_demo(self):
        m = self.manifest("ctclip", random_weights=True)
        self.assertTrue(m["model"]["demo"])
        self.assertIn("NOT A MEDICAL MODEL", m["model"]["description"])
        d = self.dir / "w"
        d.mkdir()
        (d / "CT_VocabFine_v2.pt").write_bytes(b"x")
        self.assertFalse(bundle.is_random_weights(d / "CT_VocabFine_v2.pt"))
        (d / bundle.RANDOM_MARKER).write_text("random")
        self.assertTrue(bundle.is_random_weights(d / "CT_VocabFine_v2.pt"))
        (d / "bert").mkdir()
        self.assertTrue(bundle.is_random_weights(d / "bert"))

    def test_toml_values(self):
        self.assertEqual(bundle.toml_value(1.0), "1.0")
        self.assertEqual(bundle.toml_value(1e-4), "0.0001")
        self.assertEqual(bundle.toml_value(3), "3")
        self.assertEqual(bundle.toml_value(True), "true")
        self.assertEqual(bundle.toml_value('a "b" é'), '"a \\"b\\" é"')
        self.assertEqual(bundle.toml_value([1, 2]), "[1, 2]")
        long = bundle.toml_value([f"item number {i}" for i in range(20)])
        self.assertTrue(long.startswith("[\n    ") and long.endswith("]"))
        self.assertEqual(tomllib.loads(f"x = {long}")["x"][19], "item number 19")
        self.assertEqual(tomllib.loads(f"x = {bundle.toml_value(float('inf'))}")["x"], float("inf"))
        with self.assertRaises(TypeError):
            bundle.toml_value({"a": 1})
        with self.assertRaises(ValueError):
            bundle.render_manifest({"model": {}})

    def test_directory_hash_covers_names_and_contents(self):
        d = self.dir / "bert"
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "vocab.txt").write_text("a\n")
        h1 = bundle.sha256_path(d)
        (d / "vocab.txt").write_text("b\n")
        h2 = bundle.sha256_path(d)
        (d / "vocab.txt").rename(d / "vocab2.txt")
        self.assertEqual(len({h1, h2, bundle.sha256_path(d)}), 3)


class CliTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def test_parsing_each_command(self):
        p = cli.parser()
        a = p.parse_args(["ctclip", "--repo", "R", "--checkpoint", "c.pt", "--text-encoder", "T", "--out", "O"])
        self.assertEqual((a.command, a.repo, a.text_encoder, a.tolerance, a.no_rust), ("ctclip", Path("R"), Path("T"), 1e-4, False))
        a = p.parse_args(["mednext", "--repo", "R", "--checkpoint", "c", "--config", "j", "--out", "O", "--study", "s1", "--study", "s2",
                          "--no-rust", "--tolerance", "1e-5"])
        self.assertEqual((a.config, a.study, a.no_rust, a.tolerance), (Path("j"), [Path("s1"), Path("s2")], True, 1e-5))
        a = p.parse_args(["fvlm", "--repo", "R", "--checkpoint", "c", "--mae-weights", "m", "--bert", "b", "--out", "O"])
        self.assertEqual((a.mae_weights, a.bert, a.fvlm_config), (Path("m"), Path("b"), None))
        a = p.parse_args(["diffusion", "--repo", "R", "--checkpoint", "c", "--out", "O", "--version", "v7"])
        self.assertEqual(a.version, "v7")
        a = p.parse_args(["all", "--repo", "R", "--weights", "W", "--out", "O", "--only", "ctclip,lightgbm"])
        self.assertEqual((a.weights, a.only, a.threshold), (Path("W"), "ctclip,lightgbm", 0.59))
        a = p.parse_args(["check", "B/ctclip", "B/fvlm", "--study", "s.zip"])
        self.assertEqual((a.bundles, a.study), ([Path("B/ctclip"), Path("B/fvlm")], [Path("s.zip")]))
        with self.assertRaises(SystemExit):
            p.parse_args(["ctclip", "--repo", "R", "--checkpoint", "c", "--out", "O"])  # no --text-encoder

    def test_lightgbm_command_is_the_converter(self):
        import joblib
        import lightgbm
        import numpy as np
        import pandas as pd

        rng = np.random.default_rng(0)
        x = pd.DataFrame(rng.random((200, 3)), columns=["supervised_cancer", "ctclip_Pulmonary nodule", "okhr_Lung nodule"])
        y = (x.iloc[:, 1] + 0.2 * rng.normal(size=200) > 0.5).astype(int)
        joblib.dump(lightgbm.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1).fit(x, y), self.dir / "m.pkl")
        p = subprocess.run([sys.executable, str(EXPORT / "export.py"), "lightgbm", "--main", str(self.dir / "m.pkl"),
                            "--out", str(self.dir / "ens")], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["naming"], "underscored")
        self.assertTrue((self.dir / "ens" / "manifest.toml").is_file())

    def test_missing_inputs_are_usage_errors_before_any_torch_import(self):
        p = subprocess.run([sys.executable, str(EXPORT / "export.py"), "diffusion", "--repo", str(self.dir), "--checkpoint",
                            str(self.dir / "missing.pt"), "--out", str(self.dir / "o")], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--checkpoint", p.stderr)
        self.assertNotIn("torch", sys.modules)

    def test_reference_checkout_must_be_outside_the_project(self):
        with self.assertRaisesRegex(reference.ReferenceError_, "inside this project"):
            reference.ReferenceRepo(REPO / "tools")
        with self.assertRaisesRegex(reference.ReferenceError_, "not a directory"):
            reference.ReferenceRepo(self.dir / "nope")
        r = reference.ReferenceRepo(self.dir)
        with self.assertRaisesRegex(reference.ReferenceError_, "lacks"):
            r.require("ctclip")

    def test_reading_literals_from_the_checkout_source(self):
        (self.dir / "m.py").write_text("import os\nNAMES = ['a', 'b']\nclass K:\n    def __init__(self):\n"
                                       "        self.items = [('lung', 'X', 'Not X.', 'X.')]\n")
        r = reference.ReferenceRepo(self.dir)
        self.assertEqual(r.literal("m.py", "NAMES"), ["a", "b"])
        self.assertEqual(r.attribute_literal("m.py", "K", "items"), [("lung", "X", "Not X.", "X.")])
        with self.assertRaises(reference.ReferenceError_):
            r.literal("m.py", "OTHER")

    def test_all_resolves_the_reference_file_names(self):
        w = self.dir / "w"
        w.mkdir()
        for name in ("CT_VocabFine_v2.pt", "ct_classifier.pt", "pli_2_model_last_e_15.ckpt", "lightgbm_model.pkl", "fvlm_model.pth"):
            (w / name).write_bytes(b"x")
        (w / "BiomedVLP-CXR-BERT-specialized").mkdir()
        plan = cli.resolve_all(w, None, [])
        self.assertEqual(plan["ctclip"][0], ["--checkpoint", str(w / "CT_VocabFine_v2.pt"), "--text-encoder",
                                             str(w / "BiomedVLP-CXR-BERT-specialized")])
        self.assertIsNone(plan["supervised"][0])
        self.assertIn("supervised_model.pt", plan["supervised"][1])
        self.assertEqual(plan["diffusion"][0], ["--checkpoint", str(w / "ct_classifier.pt")])
        self.assertIn("pli_2.json", plan["mednext"][1])
        self.assertIn("mae_pretrain_vit_base.pth", plan["fvlm"][1])
        self.assertEqual(plan["lightgbm"][0], ["--main", str(w / "lightgbm_model.pkl")])
        (w / "pli_2.json").write_text("{}")
        self.assertEqual(cli.resolve_all(w, None, ["mednext"]),
                         {"mednext": (["--checkpoint", str(w / "pli_2_model_last_e_15.ckpt"), "--config", str(w / "pli_2.json")], None)})
        te = self.dir / "te"
        self.assertIn(str(te), cli.resolve_all(w, te, ["ctclip"])["ctclip"][1])

    def test_report_table(self):
        reports = [
            {"model": "ctclip", "params": 176.9e6, "export_s": 15.2, "onnx_bytes": 715409689,
             "verification": {"max_abs_diff": 3e-6, "passed": True, "tolerance": 1e-4, "max_abs_diff_end_to_end": 1.8e-3,
                              "vq_code_flips": "2/13824"},
             "rust": {"ok": True, "studies": [{"study": "chest_abnormal.zip", "peak_rss_mib": 2000,
                                                "timings_ms": {"recipe": 300.0, "infer": 18000.0, "queue": 0.1, "postprocess": 0.01}}]}},
            {"model": "fvlm", "params": 94.7e6, "export_s": 11, "onnx_bytes": 3.8e8,
             "verification": {"max_abs_diff": 2e-3, "passed": False, "tolerance": 1e-4}, "rust": {"skipped": "not built"}},
            {"model": "mednext", "skipped": "not found: pli_2.json"},
            {"model": "diffusion", "onnx_bytes": 14654087, "verification": {"max_abs_diff": 3.5e-6, "passed": True, "tolerance": 1e-4},
             "rust": {"ok": True, "studies": [{"study": "s.zip", "peak_rss_mib": 1000, "timings_ms": {"recipe": 1.0, "infer": 2.0}}]}},
        ]
        t = cli.render_table(reports).splitlines()
        self.assertEqual(len(t), 6)
        self.assertEqual(t[5], "| diffusion | - | - | 14 MiB | 3.5e-06 | 0.0001 | 1 / 2 / 3 (s.zip) | 1,000 MiB |")
        self.assertIn("| ctclip | 176.9 M | 15 | 682 MiB | 3.0e-06 (same VQ codes; end to end 1.8e-03, 2/13824", t[2])
        self.assertIn("300 / 18,000 / 18,300 (chest_abnormal.zip) | 2,000 MiB |", t[2])
        self.assertIn("**FAILED**", t[3])
        self.assertIn("skipped: not built", t[3])
        self.assertIn("skipped: not found: pli_2.json", t[4])
        self.assertTrue(cli.report_ok(reports[0]))
        self.assertFalse(cli.report_ok(reports[1]))
        self.assertFalse(cli.report_ok({"model": "x", "rust": {"ok": False, "error": "boom"}}))

    def test_default_version_names_the_checkpoint(self):
        self.assertEqual(cli.default_version(Path("/w/CT_VocabFine_v2.pt"), "0123456789abcdef"), "CT_VocabFine_v2+sha256:0123456789ab")


class ServiceLogTest(unittest.TestCase):
    def test_prediction_timings_are_parsed_from_the_log(self):
        err = ("2026-11-30T03:58:47.603255Z  INFO warm-up done model=\"diffusion\" ms=263\n"
               "\x1b[2m2026-11-30T03:58:47.867588Z\x1b[0m \x1b[32m INFO\x1b[0m predicted preprocess_ms=26.25 "
               "timings_ms={\"infer\":29.8,\"postprocess\":0.001,\"queue\":0.03,\"recipe\":179.9}\n")
        t = rust.parse_timings(err)
        self.assertEqual(t, {"infer": 29.8, "postprocess": 0.001, "queue": 0.03, "recipe": 179.9, "preprocess": 26.25})
        self.assertIsNone(rust.parse_timings("nothing here"))
        self.assertEqual(rust.WARMUP.search(err).group(1), "263")

    def test_values_are_checked(self):
        self.assertEqual(rust.check_values("ctclip", {"a": 0.5}, ["a"]), [])
        self.assertEqual(len(rust.check_values("ctclip", {"a": float("nan"), "b": 1.5, "c": 0.1}, ["a", "b"])), 3)

    def test_child_peak_memory_is_its_own(self):
        code = "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('done')"
        rc, out, err, wall, peak = rust.run_measured([sys.executable, "-c", code])
        self.assertEqual((rc, out.strip()), (0, "done"), err)
        self.assertGreater(peak, 150)
        self.assertLess(peak, 1024)

    def test_missing_binary_is_reported_as_skipped(self):
        r = rust.service_check("ctclip", Path("b"), [], Path("/nonexistent"), [])
        self.assertIn("skipped", r)
        self.assertFalse(r["ok"])


class VocabularyTest(unittest.TestCase):
    def test_generated_wordpiece_vocabulary(self):
        v = random_weights.wordpiece_vocab(["Pulmonary nodule is present.", "No Pneumothorax."])
        self.assertEqual(len(v), 30522)
        self.assertEqual(len(set(v)), len(v))
        self.assertEqual([v[0], v[100], v[101], v[102], v[103]], ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        for w in ("pulmonary", "nodule", "is", "present", ".", "pneumothorax", "##a", "z", "##9"):
            self.assertIn(w, v)
        self.assertNotIn("Pulmonary", v)


if __name__ == "__main__":
    unittest.main()
