"""Verification inputs: the same tensors go through PyTorch and ONNX Runtime.

They come from a real series: `preprocess-svc tensor --recipe ctclip STUDY` gives the reference's
CT-CLIP tensor (celsus-reference §3.0, parity-tested against the Python preprocessing). The
diffusion slices are cut from it as the reference does (PyTorch bilinear resize); the MedNeXt and
fVLM inputs are derived from it approximately (resampling of the same grid, a classical lung
mask); their exact recipes are exercised by the Rust service run on the study itself. Without the
binary or the study, a synthetic chest phantom is used (reported as such).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .rust import service_env


def ctclip_volume(study: Path | None, bin_dir: Path | None) -> tuple[np.ndarray, str]:
    """float32 [1, 240, 480, 480] (D=k, H=i, W=j), values HU/1000 in [-1, 1]."""
    exe = Path(bin_dir) / "preprocess-svc" if bin_dir else None
    if study and exe and exe.is_file() and Path(study).exists():
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "ctclip.npy"
            p = subprocess.run([str(exe), "tensor", "--recipe", "ctclip", str(study), "--out", str(out)],
                               capture_output=True, text=True, env=service_env())
            if p.returncode == 0:
                v = np.load(out)
                return v.astype(np.float32, copy=False), f"preprocess-svc tensor --recipe ctclip {Path(study).name}"
            reason = (p.stdout + p.stderr).strip().splitlines()[-1:] or ["?"]
            print(f"note: preprocess-svc failed on {study} ({reason[0]}); using the synthetic phantom")
    return phantom(), "synthetic chest phantom"


def phantom(seed: int = 0) -> np.ndarray:
    """A crude chest in the CT-CLIP tensor layout: body, two lungs, a few dense nodules."""
    rng = np.random.default_rng(seed)
    d, h, w = 240, 480, 480
    z, y, x = np.ogrid[:d, :h, :w]
    hu = np.full((d, h, w), -1000.0, np.float32)
    body = ((y - 240) / 200.0) ** 2 + ((x - 240) / 150.0) ** 2 <= 1.0
    hu[np.broadcast_to(body, hu.shape) & (z > 20) & (z < 220)] = 40.0
    for cy in (150, 330):
        lung = ((y - cy) / 75.0) ** 2 + ((x - 240) / 110.0) ** 2 + ((z - 120) / 90.0) ** 2 <= 1.0
        hu[lung] = -850.0
    for _ in range(6):
        cz, cy, cx = rng.integers(70, 170), rng.choice([150, 330]) + rng.integers(-30, 30), rng.integers(200, 280)
        hu[((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) <= rng.integers(16, 64)] = 30.0
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    return (np.clip(hu, -1000, 1000) / 1000.0)[None].astype(np.float32)


def lung_mask_kji(hu_kji: np.ndarray) -> np.ndarray:
    """Classical lung mask on a [k, j, i] HU volume: < -400 HU, not connected to the border of
    its axial slice, components >= 2000 voxels (approximates the service's)."""
    from scipy import ndimage

    air = hu_kji < -400
    mask = np.zeros_like(air)
    for k in range(air.shape[0]):
        lab, n = ndimage.label(air[k])
        if n == 0:
            continue
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        keep = np.isin(lab, border, invert=True) & (lab > 0)
        mask[k] = keep
    lab, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, lab, range(1, n + 1))
        mask = np.isin(lab, 1 + np.flatnonzero(sizes >= 2000))
    return mask
