"""Analytic chest phantom sampled straight onto each demo model's input grid (numpy only).

Used by check_demo.py to tell whether the demo graphs separate a normal chest from an abnormal one.
It is a simplified stand-in for the real preprocessing: the phantom is a function of physical
position (mm), so every model input is obtained by evaluating it on that model's voxel centres
(no DICOM, no resampling error).

Patient coordinates (mm): x = left-right (column, i), y = anterior(-)/posterior(+) (row, j),
z = superior(0) -> inferior (slice, k). The scan covers z in [0, SCAN_LEN_MM).

Normal: air outside, body ellipse (fat rim + soft tissue ~40 HU), two lungs ~-850 HU with a soft
density gradient, texture and vessel tubes (30 HU, 3 mm radius), heart (40 HU, contrast chamber
250 HU), aorta, spine and ribs (cortex ~700 HU), liver dome under the right lung, Gaussian noise.
Abnormal adds solid nodules (40 HU, 12-20 mm diameter) inside the lungs and a consolidation patch
(30 HU, ~70 mm) with air bronchograms; variants allow nodules or consolidation alone.
"""
from __future__ import annotations

import numpy as np

SCAN_LEN_MM = 330.0
HU_AIR, HU_FAT, HU_SOFT, HU_LUNG = -1000.0, -100.0, 40.0, -850.0
HU_BONE, HU_MARROW, HU_BLOOD = 700.0, 250.0, 250.0

# (x, y, z, diameter) of the abnormal phantom's nodules (all inside the lungs)
NODULES = [(-85.0, -20.0, 100.0, 20.0), (60.0, -40.0, 90.0, 15.0), (-70.0, 35.0, 190.0, 18.0),
           (95.0, -25.0, 80.0, 12.0), (-100.0, 5.0, 150.0, 20.0)]
# (x, y, z, semi-axes) of the consolidation (left lung, mid-height, ~60 mm)
CONSOLIDATION = (85.0, 10.0, 165.0, (28.0, 32.0, 30.0))
VARIANTS = ("normal", "nodules", "consolidation", "abnormal")


def _lung_geometry(z):
    """Lung half-axes (ax, ay) (mm) at height z; zero above the apex (z=20) and below the bases
    (z~250)."""
    t = (np.float64(z) - 20.0) / 270.0
    if t <= 0.0 or t >= 0.85:
        return 0.0, 0.0
    s = np.sin(np.pi * t / 0.85) ** 0.6
    return 56.0 * s + 6.0, 85.0 * s + 10.0


def hu_slice(x: np.ndarray, y: np.ndarray, z: float, variant: str = "normal") -> np.ndarray:
    """HU on a 2-D grid (x, y broadcastable, mm) at height z (mm); no noise."""
    if variant not in VARIANTS:
        raise ValueError(variant)
    x, y = np.broadcast_arrays(np.asarray(x, np.float32), np.asarray(y, np.float32))
    img = np.full(x.shape, HU_AIR, np.float32)
    if z < 0.0 or z >= SCAN_LEN_MM:
        return img

    def ell(cx, cy, ax, ay):
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0

    bw, bh = 160.0, 115.0
    img[ell(0, 10, bw, bh)] = HU_FAT
    img[ell(0, 10, bw - 14, bh - 12)] = HU_SOFT
    ax, ay = _lung_geometry(z)
    lungs = np.zeros(x.shape, bool)
    if ax > 0:
        wall = ell(0, 10, bw - 26, bh - 22)
        lungs = (ell(-80, 0, ax, ay) | ell(80, 0, ax, ay)) & wall
        lung_hu = HU_LUNG + 0.35 * y + 30.0 * np.sin(x / 6.0 + z / 9.0) * np.cos(y / 8.0)
        img[lungs] = lung_hu[lungs]
        # vessel tubes, slightly oblique (position drifts with z)
        for k in range(6):
            ang = 2 * np.pi * k / 6 + 0.004 * z
            for side in (-80.0, 80.0):
                cx, cy = side + 0.5 * ax * np.cos(ang), 0.5 * ay * np.sin(ang)
                img[ell(cx, cy, 3.0, 3.0) & lungs] = 30.0
        if z > 230.0:   # liver dome under the right lung
            f = min((z - 230.0) / 40.0, 1.0)
            img[ell(-80, 10, f * ax, f * ay) & lungs] = 60.0
    if 100.0 < z < 250.0:                                 # heart, always against the mediastinum
        s = np.sin(np.pi * (z - 100.0) / 150.0)
        img[ell(10, -25, 30 * s + 15, 25 * s + 12)] = HU_SOFT
        img[ell(15, -30, 12 * s + 3, 10 * s + 3)] = HU_BLOOD
    img[ell(18, 45, 13, 13)] = HU_BLOOD                   # descending aorta
    img[ell(0, 80, 20, 17)] = HU_BONE                     # vertebral body
    img[ell(0, 80, 16, 13)] = HU_MARROW
    for k in range(10):                                   # ribs
        a = np.pi * (0.1 + 0.8 * k / 9)
        for sgn in (-1, 1):
            cx = sgn * (bw - 20) * np.cos(a - np.pi / 2) * 0.95
            cy = 10 + (bh - 16) * np.sin(a - np.pi / 2) * -0.9
            img[ell(cx, cy, 6, 4)] = HU_BONE
    if variant in ("nodules", "abnormal") and ax > 0:
        for nx, ny, nz, d in NODULES:
            r2 = (d / 2) ** 2 - (z - nz) ** 2
            if r2 > 0:
                img[ell(nx, ny, np.sqrt(r2), np.sqrt(r2)) & lungs] = 40.0
    if variant in ("consolidation", "abnormal") and ax > 0:
        cx, cy, cz, (rx, ry, rz) = CONSOLIDATION
        f = 1.0 - ((z - cz) / rz) ** 2
        if f > 0:
            blob = ell(cx, cy, rx * np.sqrt(f), ry * np.sqrt(f)) & lungs
            img[blob] = 30.0
            bronch = blob & (np.abs(np.sin((x - cx) / 6.0 + (y - cy) / 15.0)) < 0.08)
            img[bronch] = -880.0
    return img


def lung_slice(x, y, z: float, variant: str = "normal") -> np.ndarray:
    """Classical lung mask of the phantom (HU < -400 inside the lungs: lesions are holes)."""
    hu = hu_slice(x, y, z, variant)
    ax, ay = _lung_geometry(z)
    if ax <= 0:
        return np.zeros(hu.shape, bool)
    x, y = np.broadcast_arrays(x, y)
    inside = (((x + 80) / ax) ** 2 + (y / ay) ** 2 <= 1) | (((x - 80) / ax) ** 2 + (y / ay) ** 2 <= 1)
    return inside & (hu < -400.0)


def heart_slice(x, y, z: float) -> np.ndarray:
    x, y = np.broadcast_arrays(x, y)
    if not 100.0 < z < 250.0:
        return np.zeros(x.shape, bool)
    s = np.sin(np.pi * (z - 100.0) / 150.0)
    return ((x - 10) / (30 * s + 15)) ** 2 + ((y + 25) / (25 * s + 12)) ** 2 <= 1


def aorta_slice(x, y, z: float) -> np.ndarray:
    x, y = np.broadcast_arrays(x, y)
    if not 0.0 <= z < SCAN_LEN_MM:
        return np.zeros(x.shape, bool)
    return ((x - 18) / 13) ** 2 + ((y - 45) / 13) ** 2 <= 1


def _noise(rng, shape, sd=15.0):
    return rng.normal(0.0, sd, size=shape).astype(np.float32)


def ctclip_tensor(variant: str, seed: int = 0) -> np.ndarray:
    """[1,1,240,480,480] float32: HU/1000 clipped to [-1,1], 1.5 x 0.75 x 0.75 mm, the scan
    (330 mm) centred in the 360 mm field with -1 padding. Axes (k, i=x, j=y)."""
    rng = np.random.default_rng(seed)
    out = np.full((1, 1, 240, 480, 480), -1.0, np.float32)
    xs = (np.arange(480) - 239.5) * 0.75
    ys = (np.arange(480) - 239.5) * 0.75
    xx, yy = np.meshgrid(xs, ys, indexing="ij")           # [i, j]
    z0 = (360.0 - SCAN_LEN_MM) / 2
    for d in range(240):
        z = (d + 0.5) * 1.5 - z0
        if 0.0 <= z < SCAN_LEN_MM:
            hu = hu_slice(xx, yy, z, variant) + _noise(rng, xx.shape)
            out[0, 0, d] = np.clip(hu, -1000.0, 1000.0) / 1000.0
    return out


def diffusion_batches(ctclip: np.ndarray, start=12, end=228, size=256, batch=16):
    """Slices [start, end) of the ctclip tensor resized to size x size (bilinear, half-pixel
    mapping like align_corners=False), as float32 batches [B,1,s,s]."""
    vol = ctclip[0, 0, start:end]
    n = vol.shape[1]
    src = np.maximum((np.arange(size) + 0.5) * n / size - 0.5, 0.0)
    i0 = np.clip(np.floor(src).astype(int), 0, n - 1)
    i1 = np.clip(i0 + 1, 0, n - 1)
    w = (src - np.floor(src)).astype(np.float32)
    rows = vol[:, i0, :] * (1 - w)[None, :, None] + vol[:, i1, :] * w[None, :, None]
    res = rows[:, :, i0] * (1 - w)[None, None, :] + rows[:, :, i1] * w[None, None, :]
    res = res[:, None].astype(np.float32)
    return [res[b:b + batch] for b in range(0, res.shape[0], batch)]


def mednext_tensor(variant: str, seed: int = 0, dtype=np.float16) -> np.ndarray:
    """[1,1,320,320,224]: 1 x 1 x 1.5 mm, HU clipped to [-1000,1000], the 330 mm scan (220 slices)
    padded with 0 to 224 slices, centre 320 x 320 mm in-plane, then (x - mean)/std over the nonzero
    voxels (zeros stay 0)."""
    rng = np.random.default_rng(seed + 1)
    vol = np.zeros((320, 320, 224), np.float32)
    xs = (np.arange(320) - 159.5) * 1.0
    xx, yy = np.meshgrid(xs, xs, indexing="ij")
    for k in range(220):
        z = (k + 0.5) * 1.5
        hu = hu_slice(xx, yy, z, variant) + _noise(rng, xx.shape)
        vol[:, :, k + 2] = np.clip(hu, -1000.0, 1000.0)
    nz = vol != 0
    mu, sd = vol[nz].mean(), vol[nz].std()
    vol[nz] = (vol[nz] - mu) / (sd if sd > 0 else 1.0)
    return vol[None, None].astype(dtype)


def _bbox_mm(organ: str):
    """(x0, x1, y0, y1, z0, z1) in mm of an organ of the phantom."""
    if organ == "lung":
        return (-142.0, 142.0, -95.0, 95.0, 20.0, 250.0)
    if organ == "heart":
        return (-35.0, 55.0, -62.0, 12.0, 100.0, 250.0)
    if organ == "aorta":
        return (5.0, 31.0, 32.0, 58.0, 0.0, SCAN_LEN_MM)
    raise ValueError(organ)


def fvlm_inputs(variant: str, organ: str, seed: int = 0):
    """(image, organ_mask) [1,1,112,288,352] (k, j=y, i=x): the organ's bbox expanded by 5 % per
    side, window [-1150, 350] HU -> [0, 1]; the binary organ mask (lung: classical mask, lesions
    are holes)."""
    rng = np.random.default_rng(seed + 2)
    x0, x1, y0, y1, z0, z1 = _bbox_mm(organ)
    ex, ey, ez = 0.05 * (x1 - x0), 0.05 * (y1 - y0), 0.05 * (z1 - z0)
    x0, x1, y0, y1 = x0 - ex, x1 + ex, y0 - ey, y1 + ey
    z0, z1 = max(z0 - ez, 0.0), min(z1 + ez, SCAN_LEN_MM)
    xs = x0 + (np.arange(352) + 0.5) * (x1 - x0) / 352
    ys = y0 + (np.arange(288) + 0.5) * (y1 - y0) / 288
    zs = z0 + (np.arange(112) + 0.5) * (z1 - z0) / 112
    yy, xx = np.meshgrid(ys, xs, indexing="ij")           # [j, i]
    img = np.zeros((1, 1, 112, 288, 352), np.float32)
    mask = np.zeros_like(img)
    for k, z in enumerate(zs):
        hu = hu_slice(xx, yy, z, variant) + _noise(rng, xx.shape)
        img[0, 0, k] = np.clip((hu + 1150.0) / 1500.0, 0.0, 1.0)
        if organ == "lung":
            m = lung_slice(xx, yy, z, variant)
        elif organ == "heart":
            m = heart_slice(xx, yy, z)
        else:
            m = aorta_slice(xx, yy, z)
        mask[0, 0, k] = m
    return img, mask
