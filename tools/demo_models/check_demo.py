#!/usr/bin/env python3
"""Check the DEMO model bundles: a normal and an abnormal chest must get clearly different scores.

Builds the analytic chest phantom of phantom.py in four variants (normal, nodules, consolidation,
abnormal = nodules + consolidation) directly as each model's input (a simplified stand-in for the
preprocessing recipes), runs the five demo graphs with onnxruntime (CPU), turns their outputs into
label probabilities the way the services do (softmax pair / sigmoid / diffusion mean-max-std over
the slices / fVLM per organ), prints per-model scores and the inference time per study, and
asserts that for every model the abnormal score exceeds the normal score by --margin.

Score per model (the number compared):
  ctclip, supervised: mean probability over the labels;
  diffusion: mean of the three outputs (mean, max, std of the per-slice probabilities);
  mednext: mean probability over the labels other than `normal` (the ensemble's kolyan_mean rule);
  fvlm: mean probability over the lung items of the lung-organ pass (heart and aorta items come
        from the heart / aorta passes, which are identical in both phantoms).

Optionally --ctclip-npy A.npy [B.npy ...] also scores ctclip-recipe tensors written by
`preprocess-svc tensor --recipe ctclip` (e.g. from ../shared/tools/make_synthetic_ct.py series);
mednext and fVLM inputs are then derived from that tensor approximately (documented below).

Needs numpy + onnxruntime (and onnx when it generates the bundles itself):
    python3 -m venv /tmp/pydemo && /tmp/pydemo/bin/pip install onnx==1.23.2 numpy==2.4.6 onnxruntime==1.32.0
    /tmp/pydemo/bin/python tools/demo_models/check_demo.py [--bundles models/demo]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import phantom  # noqa: E402

MODELS = ("ctclip", "supervised", "diffusion", "mednext", "fvlm")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def read_manifest(path: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    with open(path, "rb") as fh:
        return tomllib.load(fh)


class Model:
    def __init__(self, bundle: str, threads: int):
        self.man = read_manifest(os.path.join(bundle, "manifest.toml"))
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(os.path.join(bundle, "model.onnx"), so,
                                         providers=["CPUExecutionProvider"])
        self.labels = self.man["labels"]["names"]
        self.name = self.man["model"]["name"]
        self.infer_s = 0.0

    def run(self, feeds: dict):
        t = time.perf_counter()
        out = self.sess.run(None, feeds)[0]
        self.infer_s += time.perf_counter() - t
        return out


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def _resize_axis(a: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Linear resize along one axis, PyTorch align_corners=False mapping."""
    n = a.shape[axis]
    src = np.maximum((np.arange(n_out) + 0.5) * n / n_out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (src - i0).astype(np.float32)
    shp = [1] * a.ndim
    shp[axis] = n_out
    w = w.reshape(shp)
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w


def resize3d(a: np.ndarray, shape) -> np.ndarray:
    for ax, n in enumerate(shape):
        if a.shape[ax] != n:
            a = _resize_axis(a, ax, n)
    return a.astype(np.float32)


def mednext_from_ctclip(x: np.ndarray, dtype) -> np.ndarray:
    """Approximate mednext input from a ctclip tensor [1,1,240,480,480] (k,i,j; 1.5/0.75/0.75 mm):
    in-plane 0.75 -> 1.0 mm (480 -> 360), centre crop 320 x 320 and 224 slices; slices that are
    entirely ctclip padding (-1) become 0 padding; (x - mean)/std over nonzero voxels; [i, j, k]."""
    v = x[0, 0, 8:232]                                     # 224 slices
    pad = np.all(v <= -0.9999, axis=(1, 2))
    v = resize3d(v, (224, 360, 360))[:, 20:340, 20:340] * 1000.0
    v[pad] = 0.0
    v = np.ascontiguousarray(np.transpose(v, (1, 2, 0)))
    nz = v != 0
    mu, sd = v[nz].mean(), v[nz].std()
    v[nz] = (v[nz] - mu) / (sd if sd > 0 else 1.0)
    return v[None, None].astype(dtype)


def fvlm_lung_from_ctclip(x: np.ndarray):
    """Approximate fVLM lung-organ inputs from a ctclip tensor: lung mask = HU < -400 inside the
    body's row and column extents (a cheap stand-in for the classical mask), lung bbox expanded by
    5 % per side, image window [-1150, 350] -> [0, 1], resized to (112, 288, 352) as (k, j, i)."""
    v = x[0, 0]                                            # [k, i, j]
    dense = v > -0.4
    body_i = np.logical_and(np.maximum.accumulate(dense, 1), np.maximum.accumulate(dense[:, ::-1], 1)[:, ::-1])
    body_j = np.logical_and(np.maximum.accumulate(dense, 2), np.maximum.accumulate(dense[:, :, ::-1], 2)[:, :, ::-1])
    lung = (~dense) & body_i & body_j & (v > -0.9999)
    if not lung.any():
        raise SystemExit("no lung found in the ctclip tensor")
    idx = np.argwhere(lung)
    lo, hi = idx.min(0), idx.max(0) + 1
    ext = ((hi - lo) * 0.05).astype(int)
    lo, hi = np.maximum(lo - ext, 0), np.minimum(hi + ext, v.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    img = np.clip((v[sl] * 1000.0 + 1150.0) / 1500.0, 0.0, 1.0)
    img = np.transpose(img, (0, 2, 1))                     # (k, j, i)
    m = np.transpose(lung[sl], (0, 2, 1)).astype(np.float32)
    img = resize3d(img, (112, 288, 352))
    m = (resize3d(m, (112, 288, 352)) >= 0.5).astype(np.float32)
    return img[None, None], m[None, None]


# ---------------------------------------------------------------------------------------------
# scoring (as the services do)
# ---------------------------------------------------------------------------------------------
def score_ctclip(m: Model, x):
    lg = m.run({"image": x})[0]                            # [55, 2]
    pos = m.man["labels"]["positive_index"]
    return dict(zip(m.labels, sigmoid(lg[:, pos] - lg[:, 1 - pos]).tolist()))


def score_sigmoid(m: Model, x):
    return dict(zip(m.labels, sigmoid(m.run({"image": x})[0]).tolist()))


def score_diffusion(m: Model, x, batch=16):
    r = m.man["recipe"]
    ps = []
    for b in phantom.diffusion_batches(x, r["slice_start"], r["slice_end"], r["size"][0], batch):
        lg = m.run({"image": b, "timesteps": np.full(len(b), r["timestep"], np.int64)})
        ps.append(sigmoid(lg[:, 1] - lg[:, 0]))
    p = np.concatenate(ps)
    return dict(zip(m.labels, [float(p.mean()), float(p.max()), float(p.std())]))


def score_fvlm(m: Model, organ_inputs):
    """organ_inputs: {organ: (image, mask)}; returns {item: p} for the organs given."""
    organs = m.man["fvlm"]["organs"]
    item_organs = m.man["fvlm"]["item_organs"]
    out = {}
    for organ, (img, mask) in organ_inputs.items():
        lg = m.run({"image": img, "organ_mask": mask, "organ": np.array([organs.index(organ)], np.int64)})[0]
        p = sigmoid(lg[:, 1] - lg[:, 0])
        for lab, o, v in zip(m.labels, item_organs, p):
            if o == organ:
                out[lab] = float(v)
    return out


def summary(name: str, probs: dict, organ_of=None) -> float:
    if name == "mednext":
        vals = [v for k, v in probs.items() if "normal" not in k.lower()]
    elif name == "fvlm":
        vals = [v for k, v in probs.items() if organ_of[k] == "lung"] or list(probs.values())
    else:
        vals = list(probs.values())
    return float(np.mean(vals))


def top3(probs: dict):
    return [f"{k}={v:.2f}" for k, v in sorted(probs.items(), key=lambda kv: -kv[1])[:3]]


# ---------------------------------------------------------------------------------------------
def evaluate(models: dict, case: str, ct: np.ndarray, med: np.ndarray, fv: dict, repeat: int = 1):
    """Scores per model; "ms" = median over `repeat` runs of the inference time of one study
    (diffusion: all 14 batches; fvlm: every organ pass), input preparation excluded."""
    res = {}
    for name, m in models.items():
        times = []
        for _ in range(max(repeat, 1)):
            m.infer_s = 0.0
            if name == "ctclip":
                probs = score_ctclip(m, ct)
            elif name == "supervised":
                probs = score_sigmoid(m, ct)
            elif name == "diffusion":
                probs = score_diffusion(m, ct)
            elif name == "mednext":
                f16 = m.man["inputs"][0]["dtype"] == "float16"
                probs = score_sigmoid(m, med.astype(np.float16 if f16 else np.float32))
            else:
                probs = score_fvlm(m, fv)
            times.append(m.infer_s)
        organ_of = dict(zip(m.labels, m.man["fvlm"]["item_organs"])) if name == "fvlm" else None
        res[name] = {"score": summary(name, probs, organ_of), "ms": 1000.0 * float(np.median(times)), "probs": probs}
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundles", default=None, help="bundle root (default: generate into a temp dir)")
    p.add_argument("--mednext-dtype", choices=["float16", "float32"], default="float16",
                   help="when generating the bundles")
    p.add_argument("--variants", default="normal,nodules,consolidation,abnormal")
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = default)")
    p.add_argument("--repeat", type=int, default=3, help="runs per model and case; the median time is shown")
    p.add_argument("--ctclip-npy", nargs="*", default=[], help="also score these ctclip tensors")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    a = p.parse_args(argv)

    tmp = None
    root = a.bundles
    if root is None:
        import make_demo_models
        tmp = tempfile.TemporaryDirectory()
        root = tmp.name
        make_demo_models.main(["--out", root, "--mednext-dtype", a.mednext_dtype])
    models = {n: Model(os.path.join(root, n), a.threads) for n in MODELS}
    for n, m in models.items():
        size = os.path.getsize(os.path.join(root, n, "model.onnx"))
        print(f"{n:10s} model.onnx {size:6d} bytes, {len(m.labels)} labels, inputs "
              f"{[(i.name, i.type, i.shape) for i in m.sess.get_inputs()]}")

    results = {}
    cases = []
    for v in [v for v in a.variants.split(",") if v]:
        t = time.perf_counter()
        ct = phantom.ctclip_tensor(v)
        med = phantom.mednext_tensor(v, dtype=np.float32)
        fv = {o: phantom.fvlm_inputs(v, o) for o in ("lung", "heart", "aorta")}
        print(f"[phantom {v}: inputs built in {time.perf_counter() - t:.1f} s]")
        cases.append((v, ct, med, fv))
    for f in a.ctclip_npy:
        ct = np.load(f).astype(np.float32).reshape(1, 1, 240, 480, 480)
        cases.append((os.path.basename(f), ct, mednext_from_ctclip(ct, np.float32),
                      {"lung": fvlm_lung_from_ctclip(ct)}))
    first = True
    for case, ct, med, fv in cases:
        if first:   # warm-up (first-run allocations are not counted)
            evaluate(models, case, ct, med, fv)
            first = False
        results[case] = evaluate(models, case, ct, med, fv, a.repeat)
        print(f"\n== {case}")
        for n, r in results[case].items():
            extra = ""
            if n == "mednext":
                extra = f" normal={r['probs'].get('normal', float('nan')):.3f}"
            if n == "diffusion":
                extra = " " + " ".join(f"{k.split('_')[2]}={v:.3f}" for k, v in r["probs"].items())
            print(f"  {n:10s} score={r['score']:.3f}  {r['ms']:7.1f} ms{extra}  top: {', '.join(top3(r['probs']))}")

    ok = True
    if "normal" in results and "abnormal" in results:
        print("\n== abnormal - normal (score), margin", a.margin)
        for n in MODELS:
            d = results["abnormal"][n]["score"] - results["normal"][n]["score"]
            flag = "ok" if d >= a.margin else "FAIL"
            ok &= d >= a.margin
            print(f"  {n:10s} {results['normal'][n]['score']:.3f} -> {results['abnormal'][n]['score']:.3f}"
                  f"  diff {d:+.3f}  {flag}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)
    if tmp is not None:
        tmp.cleanup()
    print("\nOK" if ok else "\nFAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
