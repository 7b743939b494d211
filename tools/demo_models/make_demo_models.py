#!/usr/bin/env python3
"""Generate the DEMO model bundles (models/demo/{ctclip,supervised,diffusion,mednext,fvlm}/).

THESE ARE DEMO GRAPHS, NOT MEDICAL MODELS. Each graph has exactly the real model's input and output
contract and label list (docs/model-bundle.md), but computes its outputs from a handful of cheap,
hand-designed image features (lung density, dense blobs surrounded by lung at three sizes, low
density inside the lungs, ...) followed by a fixed linear layer with seeded weights. They exist so
that the services, the ensemble and the end-to-end tests run out of the box, quickly, without
downloads, and so that a chest with lesions scores clearly higher than a normal chest. Their numbers
say nothing about any patient.

Needs only `onnx` and `numpy`. Output is deterministic (same bytes on every run).

    python3 tools/demo_models/make_demo_models.py --out models/demo [--only ctclip,fvlm]
        [--mednext-dtype float16|float32] [--force] [--debug-out DIR]

A bundle directory is written as model.onnx, then manifest.toml last (a directory with a manifest
is complete). Existing bundles are kept unless --force (or --only names them).
--debug-out DIR also writes DIR/<name>.debug.onnx: the same graph with the internal feature tensors
(dbg_raw, dbg_z) as extra outputs (a development aid; not a bundle, not the contract).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
VERSION = "demo-1"
SEED = 20240601
MODELS = ("ctclip", "supervised", "diffusion", "mednext", "fvlm")

# ----------------------------------------------------------------------------------------------
# Label lists (celsus-reference §3.2, §3.3, §3.4.1, §3.5, §3.6.4)
# ----------------------------------------------------------------------------------------------
CTCLIP_LABELS = [
    "Pathological finding", "Pulmonary nodule", "Lymphangitic carcinomatosis", "Pneumonia", "Tuberculosis",
    "Bronchiectasis", "Chronic bronchitis", "Bronchial obstruction", "Pulmonary emphysema", "Pulmonary fibrosis",
    "Pneumoconiosis", "Pulmonary edema", "Atelectasis", "Pleural effusion", "Pleural thickening",
    "Pleural plaques", "Pneumothorax", "Hemothorax", "Consolidation", "Ground-glass opacity",
    "Crazy-paving pattern", "Tree-in-bud pattern", "Mosaic attenuation", "Cavitation", "Pulmonary embolism",
    "Chronic thromboembolic disease", "Main pulmonary artery enlargement",
    "Pulmonary arteriovenous malformation", "Mediastinal or hilar lymphadenopathy", "Sarcoidosis", "Thymoma",
    "Lymphoma", "Mediastinal cyst", "Retrosternal goiter", "Pericardial effusion", "Cardiac chamber enlargement",
    "Coronary artery calcification", "Aortic dissection", "Rib fracture", "Vertebral compression fracture",
    "Bone metastases", "Chest wall mass or invasion", "Subcutaneous emphysema", "Diaphragmatic hernia",
    "Hiatal hernia", "Pneumomediastinum", "Hydropneumothorax", "Radiation pneumonitis",
    "Postoperative changes (lobectomy or pneumonectomy)", "Scoliosis", "Pectus excavatum or carinatum",
    "Degenerative spine changes", "Thyroid nodule", "Breast mass", "Other pathology",
]
MOSMED_LABELS = [
    "ribs_fracture", "pleural_effusion", "aorta_pathology", "pulmonary_trunk_pathology", "cancer",
    "atelectasis", "covid", "infiltrate", "emphysema", "paracardial_fat_pathology", "fibrosis",
    "airiness_decrease", "pneumothorax", "coronary_calcium", "osteo_fracture",
]
DIFFUSION_LABELS = [
    "diffusion_classifier_mean_probability", "diffusion_classifier_max_probability",
    "diffusion_classifier_std_probability",
]
# The reference's 22 MedNeXt classes (pli_2.json) are not public. DEMO CHOICE: `normal`, the 15
# MosMed names (the reference's evidence points at that vocabulary: `cancer`, `pneumothorax`) and
# six further common chest-CT findings in the same lower-case style.
MEDNEXT_LABELS = ["normal"] + MOSMED_LABELS + [
    "lung_nodules", "consolidation", "ground_glass_opacity", "lymphadenopathy", "pericardial_effusion",
    "bronchiectasis",
]
FVLM_ITEMS = [
    ("lung", "Emphysema"), ("lung", "Atelectasis"), ("lung", "Lung nodule"), ("lung", "Lung opacity"),
    ("lung", "Pulmonary fibrotic sequela"), ("lung", "Pleural effusion"), ("lung", "Mosaic attenuation pattern"),
    ("lung", "Peribronchial thickening"), ("lung", "Consolidation"), ("lung", "Bronchiectasis"),
    ("lung", "Interlobular septal thickening"), ("lung", "Pneumothorax"), ("lung", "Lung cancer"),
    ("heart", "Cardiomegaly"), ("heart", "Pericardial effusion"), ("heart", "Coronary artery wall calcification"),
    ("aorta", "Arterial wall calcification"), ("aorta", "Aortic aneurysm"),
]
FVLM_ORGANS = ["lung", "heart", "esophagus", "aorta"]
FVLM_MASK_IDS = [1, 2, 3, 4]
assert len(CTCLIP_LABELS) == 55 and len(MOSMED_LABELS) == 15 and len(MEDNEXT_LABELS) == 22
assert len(FVLM_ITEMS) == 18 and len(set(MEDNEXT_LABELS)) == 22

# ----------------------------------------------------------------------------------------------
# Features and how labels use them
# ----------------------------------------------------------------------------------------------
# Every 3-D graph computes the same five features (HU/1000 units "u" inside the graph):
#   0 nod_s  dense load (above -550 HU) of 2x2x2 blocks of ~6 mm cells whose six ring points
#            (along the axes, ~18 mm away) are all lung (nodules; a 6 mm vessel cannot fill a block)
#   1 nod_l  the same on single ~12 mm cells with the ring at ~24 mm (larger nodules)
#   2 mass   ~12 mm cells with lung at >= 20 of the 26 points ~36 mm away (masses, consolidation)
#   3 dens   mean density of the lung cells (ground glass, partial volume of lesions)
#   4 low    fraction of lung cells below -900 HU (emphysema-like)
# each squashed to about [-1, 1] by tanh((f - centre) / scale).
FEATURES = ["nod_s", "nod_l", "mass", "dens", "low"]
# (centre, scale) per feature, calibrated on the phantoms of check_demo.py (normal -> ~0)
NEUTRAL_DENS = -0.81    # lung density (HU/1000) used when a volume has no lung at all
CAL_3D = {"nod_s": (0.0, 1.0), "nod_l": (0.0, 1.0), "mass": (0.0, 1.5), "dens": (NEUTRAL_DENS, 0.05),
          "low": (0.02, 0.15)}
CAL_MEDNEXT = {"nod_s": (0.0, 4.0), "nod_l": (0.0, 2.0), "mass": (0.0, 4.0), "dens": (NEUTRAL_DENS, 0.05),
               "low": (0.02, 0.15)}
# diffusion: per-slice 2-D features: blobs on 5.6 mm cells (ring 17 mm) and 11.25 mm cells
# (rings 22.5 mm and 34 mm with diagonals), lung density, low fraction, lung area fraction
FEATURES_2D = ["nod_s", "nod_l", "mass", "dens", "low", "lung"]
CAL_2D = {"nod_s": (0.0, 1.0), "nod_l": (0.0, 0.8), "mass": (0.0, 0.8), "dens": (NEUTRAL_DENS, 0.05),
          "low": (0.02, 0.15), "lung": (0.0, 0.15)}

# label families: (affinity over FEATURES, bias)
FAMILY = {
    "nodule":        ([3.0, 3.0, 1.5, 0.3, 0.0], -2.4),
    "opacity":       ([0.6, 1.2, 3.0, 2.0, 0.0], -2.2),
    "lowdens":       ([0.3, 0.3, 0.6, -1.0, 3.0], -2.3),
    "lung":          ([1.2, 1.5, 2.0, 1.2, 0.8], -2.2),
    "any":           ([2.0, 2.0, 2.2, 1.2, 1.0], -1.8),
    "other":         ([0.8, 1.0, 1.2, 0.6, 0.4], -2.6),
    "normal":        ([-2.2, -2.2, -2.4, -1.2, -1.0], 2.0),
}
KEYWORDS = [  # first match wins (lower-case substring); everything else is "other"
    ("normal", "normal"),
    ("thyroid", "other"), ("breast", "other"), ("chest wall", "other"), ("bone", "other"), ("lymphoma", "other"),
    ("thymoma", "other"), ("pericardial", "other"), ("subcutaneous", "other"), ("paracardial", "other"),
    ("lymphangitic", "lung"), ("nodul", "nodule"), ("cancer", "nodule"),
    ("consolidation", "opacity"), ("pneumonia", "opacity"), ("pneumonitis", "opacity"), ("opacity", "opacity"),
    ("glass", "opacity"), ("infiltrat", "opacity"), ("covid", "opacity"), ("atelecta", "opacity"),
    ("airiness", "opacity"), ("edema", "opacity"), ("crazy", "opacity"), ("effusion", "opacity"),
    ("fibro", "lung"), ("bronch", "lung"), ("tree-in-bud", "lung"), ("cavitation", "lung"), ("septal", "lung"),
    ("pneumoconiosis", "lung"), ("pleural", "lung"), ("hemothorax", "lung"), ("lymphadenopathy", "lung"),
    ("tuberculosis", "lung"), ("sarcoid", "lung"),
    ("emphysema", "lowdens"), ("pneumothorax", "lowdens"), ("mosaic", "lowdens"), ("pneumomediastinum", "lowdens"),
    ("pathological finding", "any"), ("other pathology", "any"),
]


def family_of(label: str) -> str:
    low = label.lower()
    for key, fam in KEYWORDS:
        if key in low:
            return fam
    return "other"


def head_weights(labels, model: str, n_features: int = 5):
    """(W [F, L], b [L]): family affinity x seeded jitter (so labels are not all identical)."""
    rng = np.random.default_rng(SEED + sum(map(ord, model)))
    W = np.zeros((n_features, len(labels)), np.float32)
    b = np.zeros(len(labels), np.float32)
    for j, lab in enumerate(labels):
        aff, bias = FAMILY[family_of(lab)]
        W[:, j] = 0.8 * np.asarray(aff[:n_features], np.float32) * rng.uniform(0.75, 1.25, n_features)
        b[j] = bias + rng.uniform(-0.35, 0.35)
    return W, b


# ----------------------------------------------------------------------------------------------
# Graph builder
# ----------------------------------------------------------------------------------------------
class G:
    def __init__(self, name: str):
        self.name, self.nodes, self.inits, self.n = name, [], [], 0

    def _name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def c(self, value, dtype=np.float32, hint="c") -> str:
        name = self._name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op: str, *inputs, out: str | None = None, **attrs) -> str:
        o = out or self._name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [o], **attrs))
        return o

    # helpers ---------------------------------------------------------------------------------
    def f(self, x):                       # bool -> float
        return self.op("Cast", x, to=TensorProto.FLOAT)

    def gt(self, x, thr):
        return self.f(self.op("Greater", x, self.c(thr)))

    def lt(self, x, thr):
        return self.f(self.op("Less", x, self.c(thr)))

    def add(self, a, b):
        return self.op("Add", a, b)

    def sub(self, a, b):
        return self.op("Sub", a, b)

    def mul(self, a, b):
        return self.op("Mul", a, b)

    def div(self, a, b):
        return self.op("Div", a, b)

    def sum(self, x, axes=None, keepdims=0):
        if axes is None:
            return self.op("ReduceSum", x, keepdims=keepdims)
        return self.op("ReduceSum", x, self.c(axes, np.int64), keepdims=keepdims)

    def reshape(self, x, shape):
        return self.op("Reshape", x, self.c(shape, np.int64))

    def clip(self, x, lo, hi):
        return self.op("Clip", x, self.c(lo), self.c(hi))

    def avgpool(self, x, k, pads=None, count_include_pad=1):
        kw = dict(kernel_shape=list(k), strides=[1] * len(k) if pads is not None else list(k))
        if pads is not None:
            kw.update(pads=list(pads) * 2, count_include_pad=count_include_pad)
        return self.op("AveragePool", x, **kw)



def ring_kernel(r: int, dims: int, diagonals: bool = False) -> np.ndarray:
    """Conv kernel [1,1,(2r+1)^dims] with ones at the 2*dims points at distance r along the axes
    (diagonals: at all 3^dims - 1 points of {-r,0,r}^dims but the centre)."""
    k = np.zeros((1, 1) + (2 * r + 1,) * dims, np.float32)
    for off in np.ndindex(*(3,) * dims):
        d = [(o - 1) * r for o in off]
        nz = sum(1 for v in d if v)
        if nz == 1 or (diagonals and nz > 1):
            k[(0, 0) + tuple(v + r for v in d)] = 1.0
    return k


def squash(g: G, f, centres, scales):
    """tanh((f - centre) / scale), f [N, F]."""
    return g.op("Tanh", g.div(g.sub(f, g.c(np.asarray(centres, np.float32)[None])),
                              g.c(np.asarray(scales, np.float32)[None])))


def features3d(g: G, fine: str, coarse: str, radii=(3, 2, 3), lung_fine=None, lung_coarse=None):
    """The five raw features of FEATURES from pooled HU/1000 grids fine (~6 mm) and coarse
    (~12 mm), [1,1,a,b,c]. lung_* optional lung indicators (fvlm: from the organ mask); otherwise
    lung = cells in [-960, -600] HU not next to air.
    nod_s / nod_l: a dense cell whose six ring points (along the axes, radii[0] fine / radii[1]
    coarse cells away) are all lung; on the fine grid a 2x2x2 block must be dense, which a 6 mm
    vessel cannot fill. mass: a dense coarse cell with lung at >= 20 of the 26 points of
    {-r,0,r}^3 (r = radii[2]). Tubes (vessels, aorta), the heart and mediastinum, the chest wall
    and the diaphragm fail these tests. Returns a [1,5] tensor."""
    def lung_of(x):
        air = g.lt(x, -0.96)
        near = g.op("MaxPool", air, kernel_shape=[3] * 3, strides=[1] * 3, pads=[1] * 6)
        band = g.mul(g.gt(x, -0.96), g.lt(x, -0.6))
        return g.mul(band, g.sub(g.c(1.0), near))

    def load(x, lung, r, diagonals=False):
        ring = g.op("Conv", lung, g.c(ring_kernel(r, 3, diagonals)), pads=[r] * 6)
        iso = g.gt(ring, 19.5 if diagonals else 5.5)
        exc = g.clip(g.add(x, g.c(0.55)), 0.0, 0.6)         # density above -550 HU
        return g.sum(g.mul(exc, iso), keepdims=0)

    lf = lung_fine if lung_fine is not None else lung_of(fine)
    lc = lung_coarse if lung_coarse is not None else lung_of(coarse)
    ero = g.op("Neg", g.op("MaxPool", g.op("Neg", fine), kernel_shape=[2, 2, 2], strides=[1, 1, 1],
                           pads=[0, 0, 0, 1, 1, 1]))
    nod_s = load(ero, lf, radii[0])
    nod_l = load(coarse, lc, radii[1])
    mass = load(coarse, lc, radii[2], diagonals=True)
    n = g.sum(lc)
    n_lung = g.op("Max", n, g.c(1.0))
    dens = g.div(g.sum(g.mul(coarse, lc)), n_lung)
    has = g.gt(n, 0.5)                                     # no lung at all: neutral density
    dens = g.add(g.mul(dens, has), g.mul(g.sub(g.c(1.0), has), g.c(NEUTRAL_DENS)))
    low = g.div(g.sum(g.mul(g.lt(coarse, -0.9), lc)), n_lung)
    parts = [g.reshape(v, [1, 1]) for v in (nod_s, nod_l, mass, dens, low)]
    return g.op("Concat", *parts, axis=1)


def pool_ctclip(g: G, x: str):
    """[1,1,240,480,480] -> fine [1,1,60,60,60] (6 mm), coarse [1,1,30,30,30] (12 mm).
    The (4,8,8) pooling runs as a 2-D pool over 240 'channels' so ORT parallelises it."""
    y = g.reshape(x, [60, 4, 480, 480])
    y = g.avgpool(y, (8, 8))                             # [60,4,60,60]
    y = g.op("ReduceMean", y, axes=[1], keepdims=1)      # [60,1,60,60]
    fine = g.reshape(y, [1, 1, 60, 60, 60])
    coarse = g.avgpool(fine, (2, 2, 2))
    return fine, coarse


def make_model(g: G, inputs, outputs, doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, g.name, inputs, outputs, initializer=g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ct-demo-models",
                          producer_version=VERSION, doc_string=doc)
    m.ir_version = IR_VERSION
    helper.set_model_props(m, {"demo": "true", "note": "DEMO GRAPH - NOT A MEDICAL MODEL"})
    onnx.checker.check_model(m, full_check=True)
    return m


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, [d if d >= 0 else "N" for d in shape])


DOC = ("DEMO GRAPH, NOT A MEDICAL MODEL: hand-made image features (lung density, dense blobs inside "
       "the lungs) and a fixed seeded linear layer with the real model's input/output contract.")


def debug_outputs(g: G, pairs):
    outs = []
    for name, t, shape in pairs:
        g.op("Identity", t, out=name)
        outs.append(vi(name, TensorProto.FLOAT, shape))
    return outs


def cal(c, names):
    return [c[n][0] for n in names], [c[n][1] for n in names]


# ----------------------------------------------------------------------------------------------
# The five graphs
# ----------------------------------------------------------------------------------------------
def build_ctclip(debug=False):
    g = G("ctclip_demo")
    fine, coarse = pool_ctclip(g, "image")
    raw = features3d(g, fine, coarse)
    z = squash(g, raw, *cal(CAL_3D, FEATURES))             # [1,5]
    # CLIP-like head: image latent v = [c0, z, 0] L2-normalised (v_hat ~ v / c0 for small z); per
    # label two unit "text" vectors t_present = a*e + g/(2s), t_absent = a*e - g/(2s), with e the
    # last axis (orthogonal to the image features), s = exp(T) and g = [b, c0*W]; hence
    # s*(cos_present - cos_absent) = v_hat . g ~ b + z.W, and softmax(pair)[0] = sigmoid of it.
    W, b = head_weights(CTCLIP_LABELS, "ctclip")
    c0 = 3.0
    v = g.op("Concat", g.c(np.full((1, 1), c0, np.float32)), z, g.c(np.zeros((1, 1), np.float32)), axis=1)
    norm = g.op("Sqrt", g.sum(g.mul(v, v), axes=[1], keepdims=1))
    vh = g.div(v, norm)                                    # [1,7]
    scale = 30.0                                           # exp(T)
    gvec = np.concatenate([b[None], W * c0], axis=0)       # [6, 55]; v_hat ~ v / c0 -> logit ~ b + z.W
    half = gvec / (2 * scale)
    a = np.sqrt(np.clip(1.0 - (half ** 2).sum(0), 0.0, 1.0))
    tp = np.concatenate([half, a[None]], axis=0).astype(np.float32)   # [7, 55]
    ta = np.concatenate([-half, a[None]], axis=0).astype(np.float32)
    cp = g.op("MatMul", vh, g.c(tp))
    ca = g.op("MatMul", vh, g.c(ta))
    pair = g.op("Concat", g.op("Unsqueeze", cp, g.c([2], np.int64)),
                g.op("Unsqueeze", ca, g.c([2], np.int64)), axis=2)
    g.op("Mul", pair, g.c(np.float32(scale)), out="logits")
    outs = [vi("logits", TensorProto.FLOAT, [1, 55, 2])]
    if debug:
        outs += debug_outputs(g, [("dbg_raw", raw, [1, 5]), ("dbg_z", z, [1, 5])])
    return make_model(g, [vi("image", TensorProto.FLOAT, [1, 1, 240, 480, 480])], outs, DOC)


def build_supervised(debug=False):
    g = G("supervised_demo")
    fine, coarse = pool_ctclip(g, "image")
    raw = features3d(g, fine, coarse)
    z = squash(g, raw, *cal(CAL_3D, FEATURES))
    W, b = head_weights(MOSMED_LABELS, "supervised")
    g.op("Add", g.op("MatMul", z, g.c(W)), g.c(b[None]), out="logits")
    outs = [vi("logits", TensorProto.FLOAT, [1, 15])]
    if debug:
        outs += debug_outputs(g, [("dbg_raw", raw, [1, 5]), ("dbg_z", z, [1, 5])])
    return make_model(g, [vi("image", TensorProto.FLOAT, [1, 1, 240, 480, 480])], outs, DOC)


def build_diffusion(debug=False):
    """Per slice [B,1,256,256] (1.40625 mm pixels): 2-D versions of the blob features on 5.6 mm
    and 11.25 mm cells, lung density, low-density fraction and lung area; one logit l per slice;
    logits [B,2] = [-l/2, l/2] (softmax class 1 = sigmoid(l)). The timestep tempers the logit
    (l / (1 + t/1000)); at the reference's t = 0 it has no effect. Slices are independent (the
    result does not depend on the batch size)."""
    g = G("diffusion_demo")
    p4 = g.avgpool("image", (4, 4))                        # [B,1,64,64]  5.6 mm
    p8 = g.avgpool(p4, (2, 2))                             # [B,1,32,32] 11.25 mm

    def lung_of(x):
        air = g.lt(x, -0.96)
        near = g.op("MaxPool", air, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
        return g.mul(g.mul(g.gt(x, -0.96), g.lt(x, -0.6)), g.sub(g.c(1.0), near))

    def load(x, lung, r, diagonals=False):
        ring = g.op("Conv", lung, g.c(ring_kernel(r, 2, diagonals)), pads=[r] * 4)
        iso = g.gt(ring, 6.5 if diagonals else 3.5)
        exc = g.clip(g.add(x, g.c(0.55)), 0.0, 0.6)
        return g.sum(g.mul(exc, iso), axes=[1, 2, 3], keepdims=1)   # [B,1,1,1]

    l4, l8 = lung_of(p4), lung_of(p8)
    ero = g.op("Neg", g.op("MaxPool", g.op("Neg", p4), kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1]))
    n_lung = g.sum(l8, axes=[1, 2, 3], keepdims=1)
    n1 = g.op("Max", n_lung, g.c(1.0))
    dens = g.div(g.sum(g.mul(p8, l8), axes=[1, 2, 3], keepdims=1), n1)
    # no lung on the slice: density at the centre (neutral)
    has = g.gt(n_lung, 0.5)
    dens = g.add(g.mul(dens, has), g.mul(g.sub(g.c(1.0), has), g.c(CAL_2D["dens"][0])))
    low = g.div(g.sum(g.mul(g.lt(p8, -0.9), l8), axes=[1, 2, 3], keepdims=1), g.op("Max", n_lung, g.c(20.0)))
    frac = g.div(n_lung, g.c(1024.0))
    feats = (load(ero, l4, 3), load(p8, l8, 2), load(p8, l8, 3, True), dens, low, frac)
    raw = g.op("Concat", *[g.reshape(v, [-1, 1]) for v in feats], axis=1)
    z = squash(g, raw, *cal(CAL_2D, FEATURES_2D))           # [B,6]
    w = np.array([[2.0], [2.5], [1.5], [1.2], [0.5], [0.4]], np.float32)
    logit = g.add(g.op("MatMul", z, g.c(w)), g.c(np.array([[-2.6]], np.float32)))   # [B,1]
    t = g.op("Cast", "timesteps", to=TensorProto.FLOAT)
    temper = g.add(g.c(1.0), g.div(g.reshape(t, [-1, 1]), g.c(1000.0)))
    half = g.div(logit, g.mul(temper, g.c(2.0)))
    g.op("Concat", g.op("Neg", half), half, axis=1, out="logits")
    outs = [vi("logits", TensorProto.FLOAT, [-1, 2])]
    if debug:
        outs += debug_outputs(g, [("dbg_raw", raw, [-1, 6]), ("dbg_z", z, [-1, 6])])
    ins = [vi("image", TensorProto.FLOAT, [-1, 1, 256, 256]), vi("timesteps", TensorProto.INT64, [-1])]
    return make_model(g, ins, outs, DOC)


def build_mednext(dtype="float16", debug=False):
    """[1,1,320,320,224] (i, j, k; 1 x 1 x 1.5 mm), nonzero-normalised HU. The graph turns the
    normalised values back into approximate HU: the minimum is air (-1000 HU) and the mean of the
    above-average cells is taken as soft tissue (~+20 HU); padding zeros count as air."""
    g = G("mednext_demo")
    x = "image" if dtype == "float32" else g.op("Cast", "image", to=TensorProto.FLOAT)
    xmin = g.op("ReduceMin", x, keepdims=1)
    x = g.op("Where", g.op("Equal", x, g.c(0.0)), xmin, x)
    y = g.reshape(x, [64, 5, 320, 224])
    y = g.avgpool(y, (5, 4))                               # [64,5,64,56]
    y = g.op("ReduceMean", y, axes=[1], keepdims=1)
    fz = g.reshape(y, [1, 1, 64, 64, 56])                  # 5 x 5 x 6 mm cells
    tis = g.gt(fz, 0.05)
    tmean = g.div(g.sum(g.mul(fz, tis)), g.op("Max", g.sum(tis), g.c(1.0)))
    hu_t = 0.02                                            # assumed tissue mean, HU/1000
    scl = g.div(g.c(1.0 + hu_t), g.op("Max", g.sub(tmean, xmin), g.c(1e-3)))
    fine = g.add(g.mul(g.sub(fz, xmin), scl), g.c(-1.0))   # HU/1000
    coarse = g.avgpool(fine, (2, 2, 2))                    # [1,1,32,32,28] 10 x 10 x 12 mm
    raw = features3d(g, fine, coarse, (3, 2, 3))
    z = squash(g, raw, *cal(CAL_MEDNEXT, FEATURES))
    W, b = head_weights(MEDNEXT_LABELS, "mednext")
    g.op("Add", g.op("MatMul", z, g.c(W)), g.c(b[None]), out="logits")
    outs = [vi("logits", TensorProto.FLOAT, [1, 22])]
    if debug:
        outs += debug_outputs(g, [("dbg_raw", raw, [1, 5]), ("dbg_z", z, [1, 5])])
    in_t = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    return make_model(g, [vi("image", in_t, [1, 1, 320, 320, 224])], outs, DOC)


# fvlm: per-organ feature centres/scales and which features an organ uses
FVLM_FEATURES = FEATURES + ["calc"]     # + fraction of organ cells above 400 HU
FVLM_CAL = {  # organ -> (centres, scales) over FVLM_FEATURES
    "lung": ([0.0, 0.0, 0.0, -0.79, 0.02, 0.0], [0.5, 0.3, 4.0, 0.06, 0.15, 0.02]),
    "heart": ([0.0, 0.0, 0.0, 0.09, 0.0, 0.0], [1.0, 1.0, 1.0, 0.08, 1.0, 0.02]),
    "esophagus": ([0.0, 0.0, 0.0, 0.04, 0.0, 0.0], [1.0, 1.0, 1.0, 0.08, 1.0, 0.02]),
    "aorta": ([0.0, 0.0, 0.0, 0.2, 0.0, 0.0], [1.0, 1.0, 1.0, 0.1, 1.0, 0.02]),
}
FVLM_GATE = {"lung": [1, 1, 1, 1, 1, 0], "heart": [0, 0, 0, 1, 0, 1], "esophagus": [0, 0, 0, 1, 0, 1],
             "aorta": [0, 0, 0, 1, 0, 1]}


def fvlm_head():
    labels = [k for _, k in FVLM_ITEMS]
    W5, b = head_weights(labels, "fvlm")
    W = np.zeros((6, 18), np.float32)
    W[:5] = W5
    rng = np.random.default_rng(SEED + 7)
    for j, (organ, key) in enumerate(FVLM_ITEMS):
        if organ != "lung":   # heart / aorta items: density deviation and calcification
            W[:, j] = 0.0
            W[3, j] = rng.uniform(0.8, 1.5)
            W[5, j] = rng.uniform(1.5, 2.5) if "calcification" in key.lower() else rng.uniform(0.3, 0.8)
            b[j] = -2.3 + rng.uniform(-0.3, 0.3)
    return W, b


def build_fvlm(debug=False):
    """image [1,1,112,288,352] (k, j, i) windowed [-1150,350] -> [0,1]; organ_mask binary; organ
    int64 [1]. Features inside the organ (the mask, pooled); logits [1,18,2] = [neg, pos] with the
    other organs' items pushed down."""
    g = G("fvlm_demo")

    def pool(t):
        y = g.reshape(t, [28, 4, 288, 352])
        y = g.avgpool(y, (8, 8))                           # [28,4,36,44]
        y = g.op("ReduceMean", y, axes=[1], keepdims=1)
        fine = g.reshape(y, [1, 1, 28, 36, 44])
        return fine, g.avgpool(fine, (2, 2, 2))            # [1,1,14,18,22]

    u = g.add(g.mul("image", g.c(1.5)), g.c(-1.15))        # HU/1000
    fine, coarse = pool(u)
    mf, mc = pool("organ_mask")
    lf, lc = g.gt(mf, 0.5), g.gt(mc, 0.5)
    raw5 = features3d(g, fine, coarse, (2, 1, 2), lung_fine=lf, lung_coarse=lc)
    # organ density over the mask fraction (not only the > 0.5 cells) and calcification
    msum = g.op("Max", g.sum(mf), g.c(1e-3))
    dens = g.reshape(g.div(g.sum(g.mul(fine, mf)), msum), [1, 1])
    near = g.op("MaxPool", lf, kernel_shape=[3, 3, 3], strides=[1, 1, 1], pads=[1] * 6)
    calc = g.reshape(g.div(g.sum(g.mul(g.gt(fine, 0.4), near)), g.op("Max", g.sum(near), g.c(1.0))), [1, 1])
    parts = g.op("Gather", raw5, g.c([0, 1, 2, 4], np.int64), axis=1)  # nod_s, nod_l, mass, low
    raw = g.op("Concat", g.op("Slice", parts, g.c([0], np.int64), g.c([3], np.int64), g.c([1], np.int64)),
               dens, g.op("Slice", parts, g.c([3], np.int64), g.c([4], np.int64), g.c([1], np.int64)),
               calc, axis=1)                                # [1,6] in FVLM_FEATURES order
    organ = "organ"
    cen = g.op("Gather", g.c(np.array([FVLM_CAL[o][0] for o in FVLM_ORGANS], np.float32)), organ, axis=0)
    scl = g.op("Gather", g.c(np.array([FVLM_CAL[o][1] for o in FVLM_ORGANS], np.float32)), organ, axis=0)
    gate = g.op("Gather", g.c(np.array([FVLM_GATE[o] for o in FVLM_ORGANS], np.float32)), organ, axis=0)
    has = g.gt(g.sum(mf), 0.5)                                        # empty mask: neutral
    z = g.mul(g.mul(g.op("Tanh", g.div(g.sub(raw, cen), scl)), gate), has)   # [1,6]
    W, b = fvlm_head()
    other = np.array([[0.0 if io == o else -4.0 for io, _ in FVLM_ITEMS] for o in FVLM_ORGANS], np.float32)
    off = g.op("Gather", g.c(other), organ, axis=0)                   # [1,18]
    logit = g.add(g.add(g.op("MatMul", z, g.c(W)), g.c(b[None])), off)
    half = g.reshape(g.div(logit, g.c(2.0)), [1, 18, 1])
    g.op("Concat", g.op("Neg", half), half, axis=2, out="logits")
    outs = [vi("logits", TensorProto.FLOAT, [1, 18, 2])]
    if debug:
        outs += debug_outputs(g, [("dbg_raw", raw, [1, 6]), ("dbg_z", z, [1, 6])])
    ins = [vi("image", TensorProto.FLOAT, [1, 1, 112, 288, 352]),
           vi("organ_mask", TensorProto.FLOAT, [1, 1, 112, 288, 352]), vi("organ", TensorProto.INT64, [1])]
    return make_model(g, ins, outs, DOC)


# ----------------------------------------------------------------------------------------------
# Manifests
# ----------------------------------------------------------------------------------------------
def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)   # a JSON string is a valid TOML basic string


def toml_list(xs) -> str:
    return "[" + ", ".join(toml_str(x) if isinstance(x, str) else repr(x) for x in xs) + "]"


DESCRIPTIONS = {
    "ctclip": "CT-CLIP zero-shot contract: exp(T)*[cos(present), cos(absent)] for the reference's 55 pathologies.",
    "supervised": "Supervised CT-CLIP classifier contract: 15 MosMed logits (sigmoid).",
    "diffusion": "Diffusion-classifier contract: per-slice [B,2] logits, softmax class 1 = pathological; "
                 "the service aggregates mean/max/std over slices 12..227.",
    "mednext": "MedNeXt 3-D classifier contract: 22 sigmoid logits. The 22-class list is a DEMO CHOICE "
               "(the reference's pli_2.json is not public): normal, the 15 MosMed names, lung_nodules, "
               "consolidation, ground_glass_opacity, lymphadenopathy, pericardial_effusion, bronchiectasis.",
    "fvlm": "fVLM contract: per organ crop, [negative, positive] logits for the 18 (organ, item) prompts.",
}


def manifest(name: str, sha: str, mednext_dtype: str) -> str:
    demo_note = ("DEMO GRAPH, NOT A MEDICAL MODEL (generated by tools/demo_models/make_demo_models.py): "
                 "hand-made image features and a seeded linear layer; outputs respond to lung density and "
                 "dense lesions inside the lungs and mean nothing clinically. ")
    L = ["format = 1", "", "[model]", f"name = {toml_str(name)}", f"version = {toml_str(VERSION)}", "demo = true",
         f"description = {toml_str(demo_note + DESCRIPTIONS[name])}", "", "[files]",
         f"\"model.onnx\" = {toml_str(sha)}", ""]

    def tensor(kind, n, dt, shape):
        L.extend([f"[[{kind}]]", f"name = {toml_str(n)}", f"dtype = {toml_str(dt)}", f"shape = {toml_list(shape)}", ""])

    if name in ("ctclip", "supervised"):
        tensor("inputs", "image", "float32", [1, 1, 240, 480, 480])
        if name == "ctclip":
            tensor("outputs", "logits", "float32", [1, 55, 2])
            labels, act, extra, prefix = CTCLIP_LABELS, "softmax-pair", ["positive_index = 0"], "ctclip_"
        else:
            tensor("outputs", "logits", "float32", [1, 15])
            labels, act, extra, prefix = MOSMED_LABELS, "sigmoid", [], "supervised_"
        recipe = ["kind = \"ctclip\""]
    elif name == "diffusion":
        tensor("inputs", "image", "float32", [-1, 1, 256, 256])
        tensor("inputs", "timesteps", "int64", [-1])
        tensor("outputs", "logits", "float32", [-1, 2])
        labels, act, extra, prefix = DIFFUSION_LABELS, "softmax-pair", ["positive_index = 1"], "diffusion_classifier_"
        recipe = ["kind = \"diffusion\"", "slice_start = 12", "slice_end = 228", "size = [256, 256]",
                  "batch_size = 16", "timestep = 0"]
    elif name == "mednext":
        tensor("inputs", "image", mednext_dtype, [1, 1, 320, 320, 224])
        tensor("outputs", "logits", "float32", [1, 22])
        labels, act, extra, prefix = MEDNEXT_LABELS, "sigmoid", [], "kolyan_"
        recipe = ["kind = \"mednext\"", "spacing_mm = [1.0, 1.0, 1.5]", "hu_clip = [-1000.0, 1000.0]",
                  "roi = [320, 320, 224]"]
    else:
        tensor("inputs", "image", "float32", [1, 1, 112, 288, 352])
        tensor("inputs", "organ_mask", "float32", [1, 1, 112, 288, 352])
        tensor("inputs", "organ", "int64", [1])
        tensor("outputs", "logits", "float32", [1, 18, 2])
        labels, act, extra, prefix = [k for _, k in FVLM_ITEMS], "softmax-pair", ["positive_index = 1"], "okhr_"
        recipe = ["kind = \"fvlm\"", "hu_window = [-1150.0, 350.0]", "roi_margin = [5, 20, 20]",
                  "min_pad = [112, 256, 352]", "organ_size = [112, 288, 352]"]
    L.append("[labels]")
    L.append("names = [\n" + "".join(f"    {toml_str(x)},\n" for x in labels) + "]")
    L.append(f"activation = {toml_str(act)}")
    L.extend(extra)
    L.append(f"feature_prefix = {toml_str(prefix)}")
    L.append("")
    L.append("[recipe]")
    L.extend(recipe)
    if name == "fvlm":
        L.extend(["", "[fvlm]", f"organs = {toml_list(FVLM_ORGANS)}", f"mask_ids = {toml_list(FVLM_MASK_IDS)}",
                  "item_organs = [\n" + "".join(f"    {toml_str(o)},\n" for o, _ in FVLM_ITEMS) + "]"])
    return "\n".join(L) + "\n"


def build(name: str, mednext_dtype: str = "float16", debug: bool = False) -> onnx.ModelProto:
    if name == "mednext":
        return build_mednext(mednext_dtype, debug)
    return {"ctclip": build_ctclip, "supervised": build_supervised, "diffusion": build_diffusion,
            "fvlm": build_fvlm}[name](debug)


def write_bundle(out: str, name: str, mednext_dtype: str) -> str:
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    man = os.path.join(d, "manifest.toml")
    if os.path.exists(man):
        os.remove(man)                          # incomplete until the manifest is rewritten
    data = build(name, mednext_dtype).SerializeToString(deterministic=True)
    tmp = os.path.join(d, "model.onnx.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, os.path.join(d, "model.onnx"))
    sha = hashlib.sha256(data).hexdigest()
    with open(man + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(manifest(name, sha, mednext_dtype))
    os.replace(man + ".tmp", man)
    return sha


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/demo")
    p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(MODELS))
    p.add_argument("--mednext-dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--force", action="store_true", help="rewrite bundles that already have a manifest")
    p.add_argument("--debug-out", default=None,
                   help="also write DIR/<name>.debug.onnx with the internal features as extra outputs")
    a = p.parse_args(argv)
    names = [n for n in a.only.split(",") if n] or list(MODELS)
    for n in names:
        if n not in MODELS:
            p.error(f"unknown model {n!r}")
    for n in names:
        man = os.path.join(a.out, n, "manifest.toml")
        if os.path.exists(man) and not a.force and not a.only:
            print(f"[demo-models] {n}: present, kept", file=sys.stderr)
            continue
        sha = write_bundle(a.out, n, a.mednext_dtype)
        size = os.path.getsize(os.path.join(a.out, n, "model.onnx"))
        print(f"[demo-models] {n}: {size} bytes sha256 {sha[:16]}", file=sys.stderr)
        if a.debug_out:
            os.makedirs(a.debug_out, exist_ok=True)
            dbg = build(n, a.mednext_dtype, debug=True).SerializeToString(deterministic=True)
            with open(os.path.join(a.debug_out, f"{n}.debug.onnx"), "wb") as fh:
                fh.write(dbg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
