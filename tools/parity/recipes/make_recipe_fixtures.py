#!/usr/bin/env python3
"""(Re)create the recipe parity fixtures in crates/ct-volume/tests/fixtures/recipes/.

The Rust recipes (crates/ct-volume/src/recipe/{diffusion,mednext,fvlm}.rs) are compared with the
reference's own libraries run on small generated volumes:

  diffusion  torch F.interpolate(mode="bilinear", align_corners=False) of CT-CLIP-tensor slices
  mednext    MONAI Spacingd(pixdim=(1,1,1.5), mode="bilinear") -> clamp(-1000, 1000) ->
             SpatialPadd(roi) -> CenterSpatialCropd(roi) -> NormalizeIntensityd(nonzero, channel_wise)
  fvlm       MONAI ScaleIntensityRanged(-1150, 350, 0, 1, clip) -> ROI crop (celsus-reference
             §3.6.3, written here from the spec) -> SpatialPadd(min_pad) -> per organ: box, widen,
             crop, F.interpolate trilinear (image) / nearest (mask)

Files (all little-endian, C order):
  inputs/<name>.i16          int16 HU volume, shape [nk, nj, ni] (the Volume's storage order)
  inputs/<name>_organs.u8    uint8 organ mask (0, 1 lung, 2 heart, 4 aorta), same shape
  <case>.json                inputs, parameters, reference shapes / boxes / statistics, n_samples
  <case>.bin                 sample records, no header:
                               diffusion: u32 flat index, f32 value                      (8 bytes)
                               mednext:   u32 flat index, f32 before normalisation, f32 final (12 bytes)
                               fvlm:      u32 flat index, f32 image, f32 mask, per organ in order (12 bytes)

The diffusion input (a [6, 480, 480] CT-CLIP-like tensor) is not stored: both sides build it from
the integer formula in `diffusion_input` (exact in f32).

Usage: /tmp/pyref/bin/python tools/parity/recipes/make_recipe_fixtures.py
Needs numpy, torch, monai (pip install monai --no-deps is enough next to torch). Deterministic.
"""
from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")
from monai.data import MetaTensor  # noqa: E402
from monai.transforms import (  # noqa: E402
    CenterSpatialCropd, NormalizeIntensityd, ScaleIntensityRanged, Spacingd, SpatialPadd)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
OUT = os.path.join(ROOT, "crates", "ct-volume", "tests", "fixtures", "recipes")
TOLERANCE = 1e-4

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


def write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def write_json(path: str, obj: dict) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")


def rel(p: str) -> str:
    return os.path.relpath(p, OUT)


def stats(x: np.ndarray) -> dict:
    x = x.astype(np.float64).reshape(-1)
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max()),
            "nonzero": int(np.count_nonzero(x))}


def draw(rng: np.random.Generator, shape, n: int, extra: list[int] | None = None) -> np.ndarray:
    """n uniform flat indices plus the 8 corners and `extra`, sorted, unique."""
    total = int(np.prod(shape))
    idx = rng.integers(0, total, n)
    corners = [int(np.ravel_multi_index(tuple(c), shape))
               for c in np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(len(shape), -1).T]
    return np.unique(np.concatenate([idx, np.array(corners + (extra or []), np.int64)])).astype(np.uint32)


# ---------------------------------------------------------------------------------------------- inputs

def phantom(shape_kji, seed: int, zero_block: bool) -> np.ndarray:
    """Integer CT-like phantom [k, j, i]: air, body, two lungs, a dense spine, noise; optionally a
    block of exact 0 HU (to exercise NormalizeIntensity(nonzero))."""
    nk, nj, ni = shape_kji
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    cj, ci = (nj - 1) / 2, (ni - 1) / 2
    body = ((j - cj) / (0.45 * nj)) ** 2 + ((i - ci) / (0.47 * ni)) ** 2 < 1
    lung_l = ((j - cj + 0.05 * nj) / (0.28 * nj)) ** 2 + ((i - 0.3 * ni) / (0.14 * ni)) ** 2 < 1
    lung_r = ((j - cj + 0.05 * nj) / (0.28 * nj)) ** 2 + ((i - 0.7 * ni) / (0.14 * ni)) ** 2 < 1
    spine = ((j - 0.8 * nj) / (0.08 * nj)) ** 2 + ((i - ci) / (0.08 * ni)) ** 2 < 1
    v = np.full(shape_kji, -1000, np.int32)
    v[body] = 40
    v[lung_l | lung_r] = -850
    v[spine & body] = 700
    v += rng.integers(-60, 61, shape_kji)
    v[~body] = -1000 - rng.integers(0, 30, shape_kji)[~body]     # some air below the clip value
    v[(k % 7 == 3) & (i % 5 == 0) & body] = 1800                 # bright spots above the clip value
    if zero_block:
        v[nk // 4: nk // 2, nj // 3: nj // 2, ni // 2: ni // 2 + ni // 5] = 0
    return v.astype(np.int16)


def organ_mask(shape_kji) -> np.ndarray:
    """Lungs (1) in the middle slices, heart (2) between them, a one-column aorta (4)."""
    nk, nj, ni = shape_kji
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    cj = (nj - 1) / 2
    kk = (k >= 3) & (k < nk - 2)
    lung_l = ((j - cj + 0.05 * nj) / (0.28 * nj)) ** 2 + ((i - 0.3 * ni) / (0.14 * ni)) ** 2 < 1
    lung_r = ((j - cj + 0.05 * nj) / (0.28 * nj)) ** 2 + ((i - 0.7 * ni) / (0.14 * ni)) ** 2 < 1
    heart = ((k - nk / 2) / (0.2 * nk)) ** 2 + ((j - 0.55 * nj) / (0.12 * nj)) ** 2 + ((i - 0.5 * ni) / (0.1 * ni)) ** 2 < 1
    m = np.zeros(shape_kji, np.uint8)
    m[kk & (lung_l | lung_r)] = 1
    m[heart] = 2
    m[(k >= 5) & (k < nk - 6) & (j == int(0.7 * nj)) & (i == int(0.45 * ni))] = 4
    return m


INPUTS = {
    "odd": dict(shape_kji=(23, 41, 37), seed=11, zero_block=True),
    "aniso": dict(shape_kji=(18, 36, 44), seed=12, zero_block=True),
}


def load_input(name: str) -> np.ndarray:
    spec = INPUTS[name]
    return phantom(spec["shape_kji"], spec["seed"], spec["zero_block"])


# ---------------------------------------------------------------------------------------------- diffusion

def diffusion_input(depth: int) -> np.ndarray:
    """[depth, 480, 480] f32: a rectangle (longer along W) over a quadratic ramp, -1 in the last 40
    columns; every value is an integer divided by a power-free integer in f32 (exact on both sides)."""
    d, h, w = np.meshgrid(np.arange(depth), np.arange(480), np.arange(480), indexing="ij")
    rect = (h >= 100) & (h < 380) & (w >= 30) & (w < 200)
    a = ((d * 7 + h * 3 + w * 11) % 401).astype(np.float32) / np.float32(400)
    b = ((h * h + 3 * w + d) % 2001).astype(np.float32) - np.float32(1000)
    b = b / np.float32(1000)
    out = np.where(rect, a, b).astype(np.float32)
    out[:, :, 440:] = -1.0
    return out


def make_diffusion() -> list[dict]:
    depth, lo, hi = 6, 1, 5
    src = torch.from_numpy(diffusion_input(depth))
    rows = []
    for case, size, seed in [("diffusion_square", (256, 256), 7001), ("diffusion_rect", (200, 312), 7002)]:
        out = F.interpolate(src[lo:hi, None], size=size, mode="bilinear", align_corners=False).numpy()
        shape = out.shape
        idx = draw(np.random.default_rng(seed), shape, 2000)
        rec = np.empty(idx.size, np.dtype([("i", "<u4"), ("v", "<f4")]))
        rec["i"], rec["v"] = idx, out.reshape(-1)[idx]
        write(os.path.join(OUT, case + ".bin"), rec.tobytes())
        meta = {"case": case, "input": "diffusion_input(depth) in make_recipe_fixtures.py", "depth": depth,
                "range": [lo, hi], "size": list(size), "shape": list(shape), "stats": stats(out),
                "n_samples": int(idx.size), "tolerance": TOLERANCE}
        write_json(os.path.join(OUT, case + ".json"), meta)
        rows.append({"case": case, "shape": list(shape), "samples": int(idx.size)})
    return rows


# ---------------------------------------------------------------------------------------------- mednext

MEDNEXT_CASES = {
    # odd spacings everywhere, default roi (everything padded)
    "mednext_odd_default": dict(input="odd", spacing=(0.83, 1.37, 2.1), roi=(320, 320, 224), voxel=None, seed=8001),
    # same volume as non-integer f32 HU (x * 0.5 + 0.25), roi cropping i and j, odd roi over an even k
    "mednext_odd_crop_f32": dict(input="odd", spacing=(0.83, 1.37, 2.1), roi=(20, 40, 25), voxel=(0.5, 0.25), seed=8002),
    # i downsampled, j within AFFINE_TOL of the target (not resampled), k upsampled; crop i, pad j and k
    "mednext_aniso": dict(input="aniso", spacing=(0.6, 0.9995, 3.0), roi=(24, 48, 40), voxel=None, seed=8003),
}


def mednext_reference(vol_kji: np.ndarray, spacing, roi, voxel):
    v = vol_kji.astype(np.float32)
    if voxel is not None:
        v = v * np.float32(voxel[0]) + np.float32(voxel[1])
    img = np.ascontiguousarray(v.transpose(2, 1, 0))                  # [i, j, k]
    sp = np.array(spacing, np.float32).astype(np.float64)            # NIfTI affine is stored as f32
    aff = np.diag([-sp[0], -sp[1], sp[2], 1.0])                      # dicom2nifti LPS -> RAS flips
    aff[:3, 3] = [117.5, 96.25, -301.0]
    d = {"image": MetaTensor(torch.from_numpy(img[None]), affine=torch.from_numpy(aff))}
    d = Spacingd(keys="image", pixdim=(1.0, 1.0, 1.5), mode="bilinear")(d)
    resampled_shape = list(d["image"].shape[1:])
    d["image"] = torch.clamp(d["image"], -1000.0, 1000.0)
    d = SpatialPadd(keys="image", spatial_size=roi)(d)
    d = CenterSpatialCropd(keys="image", roi_size=roi)(d)
    pre = d["image"].as_tensor().clone()
    nz = pre[pre != 0]
    mu = float(torch.mean(nz.float()).item())
    sigma = float(torch.std(nz.float(), unbiased=False).item())
    d = NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)(d)
    out = d["image"].as_tensor()
    return resampled_shape, pre[0].numpy(), out[0].numpy(), mu, sigma, int(nz.numel())


def make_mednext() -> list[dict]:
    rows = []
    for case, c in MEDNEXT_CASES.items():
        vol = load_input(c["input"])
        res_shape, pre, out, mu, sigma, n_nz = mednext_reference(vol, c["spacing"], c["roi"], c["voxel"])
        assert pre.dtype == np.float32 and out.dtype == np.float32 and out.shape == tuple(c["roi"])
        rng = np.random.default_rng(c["seed"])
        # half of the draws inside the resampled part (non-zero before normalisation), and every
        # reference value that is tiny but not 0 (coordinate noise of MONAI's grid, see the test)
        inside = np.flatnonzero(pre.reshape(-1) != 0)
        tiny = np.flatnonzero((pre.reshape(-1) != 0) & (np.abs(pre.reshape(-1)) < 1e-3))
        extra = list(rng.choice(inside, 1000, replace=False)) + list(tiny[:50])
        idx = draw(rng, out.shape, 1000, [int(x) for x in extra])
        rec = np.empty(idx.size, np.dtype([("i", "<u4"), ("p", "<f4"), ("v", "<f4")]))
        rec["i"], rec["p"], rec["v"] = idx, pre.reshape(-1)[idx], out.reshape(-1)[idx]
        write(os.path.join(OUT, case + ".bin"), rec.tobytes())
        meta = {"case": case, "input": rel(os.path.join(OUT, "inputs", c["input"] + ".i16")),
                "shape_kji": list(INPUTS[c["input"]]["shape_kji"]), "spacing_ijk": list(c["spacing"]),
                "voxel": None if c["voxel"] is None else {"scale": c["voxel"][0], "offset": c["voxel"][1]},
                "params": {"spacing_mm": [1.0, 1.0, 1.5], "hu_clip": [-1000.0, 1000.0], "roi": list(c["roi"])},
                "resampled_shape_ijk": res_shape, "mu": mu, "sigma": sigma, "nonzero": n_nz,
                "n_tiny_nonzero": int(tiny.size), "stats_pre": stats(pre), "stats": stats(out),
                "n_samples": int(idx.size), "tolerance": TOLERANCE}
        write_json(os.path.join(OUT, case + ".json"), meta)
        rows.append({"case": case, "resampled": res_shape, "nonzero": n_nz, "tiny": int(tiny.size),
                     "samples": int(idx.size)})
    return rows


# ---------------------------------------------------------------------------------------------- fvlm

FVLM_CASES = {
    "fvlm_default": dict(input="odd", window=(-1150.0, 350.0), margin=(5, 20, 20), min_pad=(112, 256, 352),
                         organ_size=(112, 288, 352), ids=(1, 2, 3, 4), seed=9001),
    "fvlm_custom": dict(input="odd", window=(-1150.0, 350.0), margin=(2, 3, 4), min_pad=(30, 40, 30),
                        organ_size=(12, 30, 22), ids=(1, 2, 4), seed=9002),
}


def fvlm_reference(vol_kji: np.ndarray, mask_kji: np.ndarray, c: dict):
    img = torch.from_numpy(vol_kji.astype(np.float32))[None]                     # [1, k, j, i]
    msk = torch.from_numpy(mask_kji.astype(np.float32))[None]
    d = ScaleIntensityRanged(keys="image", a_min=c["window"][0], a_max=c["window"][1], b_min=0.0, b_max=1.0,
                             clip=True)({"image": img})
    img = d["image"]
    nz = np.argwhere(mask_kji > 0)
    mn, mx = nz.min(0), nz.max(0)
    shape = np.array(mask_kji.shape)
    lo = np.maximum(mn - np.array(c["margin"]), 0)
    hi = np.minimum(mx + np.array(c["margin"]), shape)
    img = img[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    msk = msk[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    roi_len = [int(x) for x in img.shape[1:]]
    d = SpatialPadd(keys=["image", "mask"], spatial_size=c["min_pad"])({"image": img, "mask": msk})
    img, msk = d["image"].as_tensor(), d["mask"].as_tensor()
    padded = [int(x) for x in img.shape[1:]]
    pad_before = [(p - n) // 2 for p, n in zip(padded, roi_len)]
    organs = []
    m0 = msk[0].numpy()
    for organ_index, oid in enumerate(c["ids"]):
        count = int((m0 == oid).sum())
        if count == 0:
            continue
        w = np.argwhere(m0 == oid)
        a, b = w.min(0), w.max(0) + 1
        widen = [int((int(b[x]) - int(a[x])) * 0.1 / 2) for x in range(3)]
        blo = [max(int(a[x]) - widen[x], 0) for x in range(3)]
        bhi = [min(int(b[x]) + widen[x], padded[x]) for x in range(3)]
        ci = img[:, blo[0]:bhi[0], blo[1]:bhi[1], blo[2]:bhi[2]]
        cm = (msk[:, blo[0]:bhi[0], blo[1]:bhi[1], blo[2]:bhi[2]] == oid).float()
        ri = F.interpolate(ci[None], size=c["organ_size"], mode="trilinear", align_corners=False)[0, 0].numpy()
        rm = F.interpolate(cm[None], size=c["organ_size"], mode="nearest")[0, 0].numpy()
        organs.append({"organ_index": organ_index, "mask_id": oid, "voxels": count, "lo": blo, "hi": bhi,
                       "present": bool((rm > 0).any()), "image": ri, "mask": rm})
    roi = {"lo": [int(x) for x in lo], "hi": [int(x) for x in hi], "pad_before": pad_before, "padded": padded}
    return roi, organs


def make_fvlm() -> list[dict]:
    rows = []
    for case, c in FVLM_CASES.items():
        vol = load_input(c["input"])
        mask = organ_mask(vol.shape)
        roi, organs = fvlm_reference(vol, mask, c)
        rng = np.random.default_rng(c["seed"])
        recs, metas = [], []
        for o in organs:
            shape = o["image"].shape
            on = np.flatnonzero(o["mask"].reshape(-1) > 0)
            extra = [int(x) for x in rng.choice(on, min(300, on.size), replace=False)]
            idx = draw(rng, shape, 700, extra)
            rec = np.empty(idx.size, np.dtype([("i", "<u4"), ("v", "<f4"), ("m", "<f4")]))
            rec["i"], rec["v"], rec["m"] = idx, o["image"].reshape(-1)[idx], o["mask"].reshape(-1)[idx]
            recs.append(rec.tobytes())
            metas.append({k: o[k] for k in ("organ_index", "mask_id", "voxels", "lo", "hi", "present")}
                         | {"image_stats": stats(o["image"]), "mask_sum": int(o["mask"].sum()),
                            "n_samples": int(idx.size)})
        write(os.path.join(OUT, case + ".bin"), b"".join(recs))
        meta = {"case": case, "input": rel(os.path.join(OUT, "inputs", c["input"] + ".i16")),
                "mask": rel(os.path.join(OUT, "inputs", c["input"] + "_organs.u8")),
                "shape_kji": list(vol.shape),
                "params": {"hu_window": list(c["window"]), "roi_margin": list(c["margin"]),
                           "min_pad": list(c["min_pad"]), "organ_size": list(c["organ_size"]),
                           "mask_ids": list(c["ids"])},
                "roi": roi, "organs": metas, "tolerance": TOLERANCE}
        write_json(os.path.join(OUT, case + ".json"), meta)
        rows.append({"case": case, "roi": roi, "organs": [(m["mask_id"], m["lo"], m["hi"], m["mask_sum"]) for m in metas]})
    return rows


def main() -> int:
    os.makedirs(os.path.join(OUT, "inputs"), exist_ok=True)
    for name in INPUTS:
        vol = load_input(name)
        write(os.path.join(OUT, "inputs", name + ".i16"), vol.astype("<i2").tobytes())
        if name == "odd":
            write(os.path.join(OUT, "inputs", name + "_organs.u8"), organ_mask(vol.shape).tobytes())
    for rows in (make_diffusion(), make_mednext(), make_fvlm()):
        for r in rows:
            print(json.dumps(r))
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    print(f"fixtures: {total / 1024:.0f} KiB in {rel(OUT) if False else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
