"""Command line: one command per model, `all`, `lightgbm` and `random-checkpoints`.

    python3 tools/export/export.py ctclip     --repo ../Celsus_PLI --checkpoint CT_VocabFine_v2.pt --text-encoder CXR-BERT/ --out models/real/ctclip
    python3 tools/export/export.py supervised --repo ../Celsus_PLI --checkpoint supervised_model.pt --text-encoder CXR-BERT/ --out models/real/supervised
    python3 tools/export/export.py diffusion  --repo ../Celsus_PLI --checkpoint ct_classifier.pt --out models/real/diffusion
    python3 tools/export/export.py mednext    --repo ../Celsus_PLI --checkpoint pli_2_model_last_e_15.ckpt --config pli_2.json --out models/real/mednext
    python3 tools/export/export.py fvlm       --repo ../Celsus_PLI --checkpoint fvlm_model.pth --mae-weights mae_pretrain_vit_base.pth --bert CXR-BERT/ --out models/real/fvlm
    python3 tools/export/export.py lightgbm   --main lightgbm_model.pkl [--thoracic lightgbm_thoracic_model.pkl] --out models/real/ensemble
    python3 tools/export/export.py all        --repo ../Celsus_PLI --weights WEIGHTS_DIR --out models/real
    python3 tools/export/export.py random-checkpoints --repo ../Celsus_PLI --out /tmp/random-weights   (verification only)

Every model command writes a bundle (model.onnx, then manifest.toml), verifies the graph against
the reference PyTorch model on the same input (max |diff| of the probabilities <= --tolerance,
default 1e-4), runs the bundle through its Rust service (`<svc> info` + `predict` on real
studies) and writes a report (export_report.json in the bundle directory, and on stdout).
Exit codes: 0 all good, 1 verification or service check failed, 2 usage / input error.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import __version__, bundle, contracts
from .reference import ExportError

PROJECT = Path(__file__).resolve().parents[3]
EXPORT_DIR = Path(__file__).resolve().parents[1]
LAUNCHER = EXPORT_DIR / "export.py"
DEFAULT_STUDIES = [PROJECT / "tests" / "fixtures" / "studies" / "chest_abnormal.zip",
                   PROJECT / "tests" / "fixtures" / "studies" / "chest_normal.zip"]
DEFAULT_BIN = PROJECT / "target" / "release"
TOOL = "tools/export (celsus_export)"
ORDER = ["ctclip", "supervised", "diffusion", "mednext", "fvlm"]


class UsageError(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# argument parsing
# ------------------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, repo_required: bool = True) -> None:
    p.add_argument("--repo", type=Path, required=repo_required,
                   help="checkout of FscoreLab/Celsus_PLI (outside this project); its code is imported, never copied")
    p.add_argument("--study", type=Path, action="append", default=None,
                   help="study for the verification input and the Rust service run (repeatable; default: "
                        "tests/fixtures/studies/chest_abnormal.zip and chest_normal.zip)")
    p.add_argument("--bin-dir", type=Path, default=DEFAULT_BIN, help="release binaries (default target/release)")
    p.add_argument("--no-verify", action="store_true", help="skip the PyTorch vs ONNX Runtime comparison")
    p.add_argument("--no-rust", action="store_true", help="skip the Rust service run")
    p.add_argument("--tolerance", type=float, default=contracts.TOLERANCE["float32"],
                   help="largest accepted max |diff| of the probabilities (default 1e-4, fp32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch and ONNX Runtime (default: all)")
    p.add_argument("--report", type=Path, default=None, help="also write the JSON report here")


def _model_parser(sub, name: str, help_: str):
    p = sub.add_parser(name, help=help_, description=help_)
    _common(p)
    p.add_argument("--checkpoint", type=Path, required=True, help="the original checkpoint")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--version", default=None, help="model.version of the manifest (default: checkpoint name + hash)")
    return p


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="export.py", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version-info", action="version", version=f"celsus_export {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    for name in ("ctclip", "supervised"):
        p = _model_parser(sub, name, f"{name}: CT-CLIP {'zero-shot (CT_VocabFine_v2.pt)' if name == 'ctclip' else 'supervised classifier (supervised_model.pt)'}")
        p.add_argument("--text-encoder", type=Path, required=True,
                       help="local BiomedVLP-CXR-BERT-specialized directory (tokenizer + BertModel weights)")
        p.add_argument("--allow-missing-keys", action="store_true",
                       help="export even if the checkpoint lacks weights the graph uses (they stay random, as in the reference)")
    _model_parser(sub, "diffusion", "diffusion: the diffusion anomaly classifier (ct_classifier.pt)")
    p = _model_parser(sub, "mednext", "mednext: the MedNeXt 3-D classifier (checkpoint + pli_2.json)")
    p.add_argument("--config", type=Path, required=True, help="the MedNeXt JSON config (pli_2.json)")
    p.add_argument("--ignore-body-crop", action="store_true", help="export even if the config enables crop_by_body_part")
    p = _model_parser(sub, "fvlm", "fvlm: the fVLM organ model (fvlm_model.pth + MAE weights + CXR-BERT)")
    p.add_argument("--mae-weights", type=Path, required=True, help="mae_pretrain_vit_base.pth")
    p.add_argument("--bert", type=Path, required=True, help="local BiomedVLP-CXR-BERT-specialized directory (FVLM_BERT_PATH)")
    p.add_argument("--fvlm-config", type=Path, default=None, help="lavis config (default: the checkout's pretrain_ct.yaml)")

    p = sub.add_parser("lightgbm", help="lightgbm: the pickled LightGBM models -> ensemble bundle (convert_lightgbm.py)",
                       description="Runs tools/export/convert_lightgbm.py; all its options are accepted.")
    p.add_argument("args", nargs=argparse.REMAINDER, help="convert_lightgbm.py options (--main, --thoracic, --out, ...)")

    p = sub.add_parser("all", help="export every model found in --weights, then the ensemble; one report table")
    _common(p)
    p.add_argument("--weights", type=Path, required=True,
                   help="directory with the reference's files: " + ", ".join(sorted(_all_file_names())))
    p.add_argument("--text-encoder", type=Path, default=None,
                   help="CXR-BERT directory for ctclip/supervised (default: WEIGHTS/BiomedVLP-CXR-BERT-specialized)")
    p.add_argument("--out", type=Path, required=True, help="output root: one bundle per model (+ ensemble/)")
    p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(ORDER + ["lightgbm"]))
    p.add_argument("--threshold", type=float, default=0.59, help="main LightGBM threshold (default 0.59)")

    p = sub.add_parser("check", help="run existing bundles through their Rust services again (no torch needed)",
                       description="Runs `<svc> predict` for each bundle (and `ensemble-svc predict` for an ensemble "
                                   "bundle, on the other bundles' outputs); prints the table with the manifests' "
                                   "recorded verification.")
    p.add_argument("bundles", nargs="+", type=Path, help="bundle directories (e.g. OUT/*)")
    p.add_argument("--study", type=Path, action="append", default=None, help="study (repeatable; default: the two fixtures)")
    p.add_argument("--bin-dir", type=Path, default=DEFAULT_BIN)
    p.add_argument("--report", type=Path, default=None)

    p = sub.add_parser("random-checkpoints",
                       help="VERIFICATION ONLY: randomly initialised checkpoints with the exact architectures and file formats")
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="directory to write (never a medical model; marked as such)")
    p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(ORDER + ["lightgbm", "bert"]))
    p.add_argument("--seed", type=int, default=20251002)
    return ap


def _all_file_names():
    names = set()
    for v in contracts.DEFAULT_FILES.values():
        names.update(v.values() if isinstance(v, dict) else [v])
    return names


def resolve_all(weights: Path, text_encoder: Path | None, only: list[str]) -> dict:
    """{model: (command-line arguments, None) or (None, reason skipped)} for `all`."""
    f = contracts.DEFAULT_FILES
    te = Path(text_encoder) if text_encoder else weights / f["text_encoder"]
    plan = {}
    for model in ORDER + ["lightgbm"]:
        if only and model not in only:
            continue
        need = dict(f[model])
        if model == "lightgbm":
            main = weights / need["main"]
            if not main.is_file():
                plan[model] = (None, f"{main} not found")
                continue
            args = ["--main", str(main)]
            thor = weights / need["thoracic"]
            if thor.is_file():
                args += ["--thoracic", str(thor)]
            plan[model] = (args, None)
            continue
        paths = {k: weights / v for k, v in need.items()}
        if model in ("ctclip", "supervised"):
            paths["text_encoder"] = te
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            plan[model] = (None, "not found: " + ", ".join(missing))
            continue
        args = ["--checkpoint", str(paths.pop("checkpoint"))]
        for k, p in paths.items():
            args += [{"text_encoder": "--text-encoder", "config": "--config", "mae_weights": "--mae-weights", "bert": "--bert"}[k], str(p)]
        plan[model] = (args, None)
    return plan


# ------------------------------------------------------------------------------------------------
# manifest and report
# ------------------------------------------------------------------------------------------------
def build_manifest(*, model: str, version: str, description: str, random_weights: bool, inputs: list, outputs: list,
                   labels: dict, recipe: dict, extra: dict, provenance: dict, verification: dict | None) -> dict:
    desc = description
    if random_weights:
        desc = ("RANDOMLY INITIALISED WEIGHTS (exporter verification), NOT A MEDICAL MODEL: the real architecture "
                "with random parameters; its outputs mean nothing. " + desc)
    m = {"model": {"name": model, "version": version, "demo": bool(random_weights), "description": desc},
         "files": {"model.onnx": ""}, "inputs": inputs, "outputs": outputs, "labels": labels, "recipe": recipe}
    m.update(extra)
    m["provenance"] = provenance
    if verification is not None:
        m["verification"] = {k: v for k, v in verification.items() if v is not None and not isinstance(v, (dict, list))}
    return m


def default_version(checkpoint: Path, sha: str) -> str:
    return f"{checkpoint.stem}+sha256:{sha[:12]}"


def fmt_mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 1024:,.0f} KiB"


def render_table(reports: list[dict]) -> str:
    """Markdown verification table: model, export time, ONNX size, max |diff|, Rust service CPU latency."""
    lines = ["| model | params | export (s) | ONNX size | max abs diff (probabilities) | tolerance | Rust service on CPU: recipe / infer / total ms (study) | service peak RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | - | - | - | skipped: {r['skipped']} | - | - | - |")
            continue
        v = r.get("verification") or {}
        diff = v.get("max_abs_diff")
        dtxt = "not run" if diff is None else f"{diff:.1e}" + ("" if v.get("passed", True) else " **FAILED**")
        if v.get("max_abs_diff_end_to_end") is not None:
            dtxt += (f" (same VQ codes; end to end {v['max_abs_diff_end_to_end']:.1e}, "
                     f"{v.get('vq_code_flips')} VQ codes differ at near-ties)")
        rust = r.get("rust") or {}
        lat, rss = "-", "-"
        for s in rust.get("studies", []):
            t = s.get("timings_ms")
            if t:
                lat = f"{t.get('recipe', 0):,.0f} / {t.get('infer', 0):,.0f} / {t.get('total', _total(t)):,.0f} ({s['study']})"
                rss = f"{s.get('peak_rss_mib', 0):,.0f} MiB"
                break
        if rust.get("skipped"):
            lat = "skipped: " + rust["skipped"]
        elif rust and not rust.get("ok"):
            lat = "**FAILED**: " + str(rust.get("error") or [s.get("error") or s.get("problems") for s in rust.get("studies", [])])
        params = f"{r['params'] / 1e6:.1f} M" if r.get("params") else "-"
        export_s = f"{r['export_s']:.0f}" if r.get("export_s") is not None else "-"
        size = fmt_mib(r["onnx_bytes"]) if r.get("onnx_bytes") else "-"
        lines.append(f"| {r['model']} | {params} | {export_s} | {size} | {dtxt} | {v.get('tolerance', '-')} | {lat} | {rss} |")
    return "\n".join(lines)


def _total(t: dict) -> float:
    return sum(v for k, v in t.items() if k in ("queue", "recipe", "infer", "postprocess"))


def write_report(report: dict, *paths) -> None:
    text = json.dumps(report, indent=2, default=str)
    for p in paths:
        if p:
            Path(p).parent.mkdir(parents=True, exist_ok=True)
            Path(p).write_text(text + "\n")


# ------------------------------------------------------------------------------------------------
# one model
# ------------------------------------------------------------------------------------------------
def versions() -> dict:
    out = {}
    for mod in ("torch", "onnx", "onnxruntime", "onnxscript", "transformers", "monai"):
        try:
            out[f"{mod}_version"] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            pass
    return out


def run_model(model: str, a) -> dict:
    from . import common, inputs
    from .reference import ReferenceRepo

    t_start = time.time()
    common.torch_threads(a.threads)
    repo = ReferenceRepo(a.repo)
    studies = [Path(s) for s in (a.study or [s for s in DEFAULT_STUDIES if s.exists()])]
    volume, vol_src = inputs.ctclip_volume(studies[0] if studies else None, a.bin_dir)
    if model == "ctclip":
        from .ctclip import export_ctclip as fn
        ex = fn(repo, a.checkpoint, a.text_encoder, volume, a.allow_missing_keys)
    elif model == "supervised":
        from .ctclip import export_supervised as fn
        ex = fn(repo, a.checkpoint, a.text_encoder, volume, a.allow_missing_keys)
    elif model == "diffusion":
        from .diffusion import export as fn
        ex = fn(repo, a.checkpoint, volume)
    elif model == "mednext":
        from .mednext import export as fn
        ex = fn(repo, a.checkpoint, a.config, volume, a.ignore_body_crop)
    elif model == "fvlm":
        from .fvlm import export as fn
        ex = fn(repo, a.checkpoint, a.mae_weights, a.bert, a.fvlm_config, volume)
    else:
        raise UsageError(f"unknown model {model}")
    del volume
    gc.collect()
    build_s = time.time() - t_start

    out = bundle.begin_bundle(a.out, stale=("model.onnx", "model.onnx.data"))
    print(f"[{model}] exporting ONNX ({ex.params / 1e6:.1f} M parameters) ...", file=sys.stderr)
    info = common.export_onnx(ex, out / "model.onnx")
    sess = common.session(out / "model.onnx", a.threads)
    io_errors = common.check_session_io(sess, ex)
    if io_errors:
        raise RuntimeError("the graph does not match the bundle contract: " + "; ".join(io_errors))
    verification = None
    if not a.no_verify:
        print(f"[{model}] verifying against PyTorch ...", file=sys.stderr)
        t = time.time()
        v = ex.verify(sess, a.tolerance)
        verification = {"max_abs_diff": v.pop("max_abs_diff"), "tolerance": a.tolerance}
        verification["passed"] = bool(v.pop("passed", verification["max_abs_diff"] <= a.tolerance))
        verification.update(v)
        verification.update({"input": vol_src, "verify_s": round(time.time() - t, 1)})
    del sess
    gc.collect()

    sha = bundle.sha256_file(a.checkpoint)
    random_weights = bundle.is_random_weights(a.checkpoint)
    prov = bundle.provenance(tool=TOOL, tool_version=__version__, model=model, checkpoints=ex.sources, opset=info["opset"],
                             repo_commit=repo.commit(), versions=versions(), notes=ex.notes)
    manifest = build_manifest(model=model, version=a.version or default_version(Path(a.checkpoint), sha),
                              description=ex.description, random_weights=random_weights, inputs=ex.input_specs,
                              outputs=ex.output_specs, labels=ex.labels, recipe=ex.recipe, extra=ex.extra,
                              provenance=prov, verification=verification)
    report = {"model": model, "bundle": str(out), "checkpoint": str(a.checkpoint), "random_weights": random_weights,
              "params": ex.params, "build_s": round(build_s, 1), "export_s": round(info["export_s"], 1),
              "onnx_bytes": info["onnx_bytes"], "opset": info["opset"], "verification": verification, "notes": ex.notes}
    labels = list(ex.labels["names"])
    del ex
    gc.collect()
    if verification and not verification["passed"]:
        report["error"] = f"max |diff| {verification['max_abs_diff']:.3g} > tolerance {a.tolerance:g}: manifest NOT written"
    else:
        bundle.write_manifest(out, manifest, files=info["files"])
        if not a.no_rust:
            from .rust import service_check

            print(f"[{model}] running the bundle through {contracts.SERVICE_BINARY[model]} ...", file=sys.stderr)
            report["rust"] = service_check(model, out, studies, a.bin_dir, labels)
    report["peak_rss_mib"] = round(common.peak_rss_mib())
    report["total_s"] = round(time.time() - t_start, 1)
    return report


def report_ok(r: dict) -> bool:
    if r.get("error"):
        return False
    v = r.get("verification")
    if v is not None and not v.get("passed"):
        return False
    rust = r.get("rust")
    return not (rust and not rust.get("ok") and not rust.get("skipped"))


# ------------------------------------------------------------------------------------------------
# lightgbm, all, random
# ------------------------------------------------------------------------------------------------
def convert_lightgbm_module():
    spec = importlib.util.spec_from_file_location("convert_lightgbm", EXPORT_DIR / "convert_lightgbm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_all(a) -> int:
    only = [x for x in a.only.split(",") if x]
    bad = [x for x in only if x not in ORDER + ["lightgbm"]]
    if bad:
        raise UsageError(f"--only: unknown {bad}")
    plan = resolve_all(a.weights, a.text_encoder, only)
    a.out.mkdir(parents=True, exist_ok=True)
    common = []
    for s in a.study or []:
        common += ["--study", str(s)]
    common += ["--bin-dir", str(a.bin_dir), "--tolerance", repr(a.tolerance)]
    if a.no_verify:
        common.append("--no-verify")
    if a.no_rust:
        common.append("--no-rust")
    if a.threads:
        common += ["--threads", str(a.threads)]
    reports = []
    for model, (args, reason) in plan.items():
        if args is None:
            print(f"[all] {model}: skipped ({reason})", file=sys.stderr)
            reports.append({"model": model, "skipped": reason})
            continue
        if model == "lightgbm":
            reports.append(_all_lightgbm(a, args, reports))
            continue
        rp = a.out / model / "export_report.json"
        if rp.exists():
            rp.unlink()
        cmd = [sys.executable, str(LAUNCHER), model, "--repo", str(a.repo), "--out", str(a.out / model), *args, *common]
        print(f"[all] {model}: {' '.join(cmd[2:])}", file=sys.stderr)
        t = time.time()
        p = subprocess.run(cmd)  # one process per model: memory is returned between models
        if rp.exists():
            reports.append(json.loads(rp.read_text()))
        else:
            reports.append({"model": model, "error": f"exit code {p.returncode} after {time.time() - t:.0f} s (see above)"})
    table = render_table([r for r in reports if r["model"] != "lightgbm"])
    summary = {"reports": reports, "table": table}
    write_report(summary, a.out / "export_report.json", a.report)
    (a.out / "verification.md").write_text(table + "\n")
    print(table)
    for r in reports:
        if r["model"] == "lightgbm" and not r.get("skipped"):
            print(f"\nensemble (LightGBM): {lightgbm_summary(r)}")
    return 0 if all(report_ok(r) or r.get("skipped") for r in reports) else 1


def lightgbm_summary(r: dict) -> str:
    if r.get("error"):
        return "FAILED: " + r["error"]
    text = (f"bundle {r.get('bundle')}, naming case {r.get('naming')}, max |text model - pickle| "
            f"{r.get('max_abs_diff_text_vs_pickle')}")
    chk = r.get("ensemble_check") or {}
    d = chk.get("decision")
    if d:
        text += (f"; ensemble-svc predict on the services' outputs: probability {d.get('probability_of_pathology'):.4f}, "
                 f"pathology {d.get('pathology')}, thoracic {d.get('probability_of_pathology_thoracic')}, "
                 f"{len(d.get('missing_features') or [])} missing features")
    elif chk.get("skipped"):
        text += "; ensemble-svc check skipped: " + chk["skipped"]
    return text


def _all_lightgbm(a, args, reports) -> dict:
    conv = convert_lightgbm_module()
    out = a.out / "ensemble"
    try:
        main = Path(args[args.index("--main") + 1])
        thor = Path(args[args.index("--thoracic") + 1]) if "--thoracic" in args else None
        r = conv.convert(main, out, thor, threshold=a.threshold)
    except Exception as e:  # noqa: BLE001 - reported
        return {"model": "lightgbm", "error": str(e)}
    r["model"] = "lightgbm"
    # the five services' outputs on the first study, as the gateway would hand them to the ensemble
    scores = {}
    for rep in reports:
        for s in (rep.get("rust") or {}).get("studies", [])[:1]:
            if "values" in s:
                scores[rep["model"]] = s["values"]
    if scores and not a.no_rust:
        from .rust import ensemble_check

        r["ensemble_check"] = ensemble_check(out, scores, a.bin_dir)
        if not r["ensemble_check"].get("ok") and not r["ensemble_check"].get("skipped"):
            r["error"] = "ensemble-svc predict failed: " + str(r["ensemble_check"].get("error"))
    write_report(r, out / "export_report.json")
    return r


def run_check(a) -> int:
    """`check`: the service runs of `run_model` on existing bundles."""
    import tomllib

    from .rust import ensemble_check, service_check

    studies = [Path(x) for x in (a.study or [x for x in DEFAULT_STUDIES if x.exists()])]
    reports, ensembles = [], []
    for d in a.bundles:
        man = tomllib.loads((Path(d) / "manifest.toml").read_text())
        if "ensemble" in man:
            ensembles.append(Path(d))
            continue
        model = man["model"]["name"]
        labels = man["labels"].get("names") or (contracts.MOSMED_PATHOLOGIES if model == "supervised" else [])
        print(f"[check] {model}: {d}", file=sys.stderr)
        onnx = Path(d) / "model.onnx"
        reports.append({"model": model, "bundle": str(d), "onnx_bytes": onnx.stat().st_size if onnx.exists() else None,
                        "verification": man.get("verification"),
                        "rust": service_check(model, Path(d), studies, a.bin_dir, labels)})
    for d in ensembles:
        scores = {r["model"]: s["values"] for r in reports for s in r["rust"].get("studies", [])[:1] if "values" in s}
        r = {"model": "lightgbm", "bundle": str(d), "ensemble_check": ensemble_check(d, scores, a.bin_dir)}
        if not r["ensemble_check"].get("ok") and not r["ensemble_check"].get("skipped"):
            r["error"] = "ensemble-svc predict failed: " + str(r["ensemble_check"].get("error"))
        reports.append(r)
    table = render_table([r for r in reports if r["model"] != "lightgbm"])
    write_report({"reports": reports, "table": table}, a.report)
    print(table)
    for r in reports:
        if r["model"] == "lightgbm":
            print(f"\nensemble (LightGBM): {lightgbm_summary(r)}")
    return 0 if all(report_ok(r) for r in reports) else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lightgbm"]:  # everything after it is convert_lightgbm.py's
        return convert_lightgbm_module().main(argv[1:])
    a = parser().parse_args(argv)
    try:
        if a.command == "all":
            return run_all(a)
        if a.command == "check":
            return run_check(a)
        if a.command == "random-checkpoints":
            from .random_weights import main as random_main

            return random_main(a)
        for attr in ("checkpoint", "config", "mae_weights", "bert", "text_encoder"):
            p = getattr(a, attr, None)
            if p is not None and not Path(p).exists():
                raise UsageError(f"--{attr.replace('_', '-')} {p}: not found")
        report = run_model(a.command, a)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_report(report, Path(a.out) / "export_report.json", a.report)
    print(json.dumps({k: report.get(k) for k in ("model", "bundle", "params", "export_s", "onnx_bytes", "verification", "error")},
                     indent=2, default=str))
    print(render_table([report]))
    return 0 if report_ok(report) else 1


if __name__ == "__main__":
    sys.exit(main())
