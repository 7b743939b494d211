"""Torch-side helpers shared by the five exporters: ONNX export, ONNX Runtime sessions, the
PyTorch-vs-ONNX comparison, checkpoint loading as the reference does it, resource figures."""

from __future__ import annotations

import gc
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OPSET = 18  # the torch.onnx (dynamo) exporter's native opset; ONNX Runtime 1.32 runs it


def torch_threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def free() -> None:
    gc.collect()


@dataclass
class Exported:
    """What one exporter hands to the driver."""

    model: str
    module: object                       # torch.nn.Module: the graph to export (eval)
    example_inputs: tuple                # tensors, in input order
    input_specs: list                    # [[inputs]] of the manifest
    output_specs: list                   # [[outputs]]
    labels: dict                         # [labels]
    recipe: dict                         # [recipe]
    sources: dict                        # provenance role -> path
    description: str
    extra: dict = field(default_factory=dict)        # further manifest sections, e.g. [fvlm]
    notes: list = field(default_factory=list)
    dynamic_shapes: object = None
    verify: object = None                # callable(session) -> dict (the comparison)
    params: int = 0


def export_onnx(ex: Exported, path: Path, opset: int = OPSET) -> dict:
    """torch.onnx.export (dynamo) of `ex.module` to `path` (single file when < 2 GB)."""
    import onnx
    import torch

    names_in = [t["name"] for t in ex.input_specs]
    names_out = [t["name"] for t in ex.output_specs]
    t0 = time.time()
    with torch.no_grad():
        prog = torch.onnx.export(
            ex.module, ex.example_inputs, dynamo=True, opset_version=opset, input_names=names_in,
            output_names=names_out, dynamic_shapes=ex.dynamic_shapes, external_data=False, optimize=True,
            verbose=False,
        )
    big = sum(int(np.prod(v.shape)) * v.element_size() for v in ex.module.state_dict().values()) > 1.9e9
    files = ["model.onnx"]
    if big:
        # over protobuf's 2 GB: weights in model.onnx.data beside the graph (listed in [files];
        # ONNX Runtime reads it relative to model.onnx). Written in place: the reference inside the
        # graph names the data file.
        prog.save(str(path), external_data=True)
        files.append(path.name + ".data")
    else:
        tmp = path.with_suffix(".onnx.tmp")
        prog.save(str(tmp), external_data=False)
        os.replace(tmp, path)
    del prog
    free()
    export_s = time.time() - t0
    onnx.checker.check_model(str(path))  # by path: works for any size
    m = onnx.load(str(path), load_external_data=False)
    real_opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), opset)
    got_in = [i.name for i in m.graph.input]
    got_out = [o.name for o in m.graph.output]
    del m
    if got_in != names_in or got_out != names_out:
        raise RuntimeError(f"exported graph has inputs {got_in} / outputs {got_out}, expected {names_in} / {names_out}")
    size = sum((path.parent / f).stat().st_size for f in files if (path.parent / f).exists())
    return {"export_s": export_s, "opset": int(real_opset), "onnx_bytes": size, "files": files}


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


def check_session_io(sess, ex: Exported) -> list[str]:
    """Differences between the ONNX Runtime session's real inputs/outputs and the manifest's
    (what the Rust services check at start-up)."""
    errors = []
    for kind, real, want in (("inputs", sess.get_inputs(), ex.input_specs), ("outputs", sess.get_outputs(), ex.output_specs)):
        if len(real) != len(want):
            errors.append(f"{kind}: {len(real)} in the graph, {len(want)} in the manifest")
            continue
        for r, w in zip(real, want):
            dt = ORT_TYPES.get(r.type, r.type)
            shape = [d if isinstance(d, int) else -1 for d in r.shape]
            if r.name != w["name"] or dt != w["dtype"] or shape != w["shape"]:
                errors.append(f"{kind} {w['name']}: graph has {r.name} {dt} {shape}, manifest says {w['dtype']} {w['shape']}")
    return errors


def softmax_pair(x: np.ndarray, positive: int) -> np.ndarray:
    x = x.astype(np.float64)
    return 1.0 / (1.0 + np.exp(-(x[..., positive] - x[..., 1 - positive])))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def diff_stats(reference: np.ndarray, onnx_: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    onnx_ = np.asarray(onnx_, dtype=np.float64)
    if reference.shape != onnx_.shape:
        raise RuntimeError(f"shape mismatch: PyTorch {reference.shape}, ONNX Runtime {onnx_.shape}")
    if not (np.isfinite(reference).all() and np.isfinite(onnx_).all()):
        return float("inf")
    return float(np.max(np.abs(reference - onnx_))) if reference.size else 0.0


def load_torch(path, **kwargs):
    """torch.load on CPU; `weights_only` as the reference's call (None = torch's default)."""
    import torch

    return torch.load(str(path), map_location="cpu", **kwargs)


def count_params(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def timed(fn, *args, **kwargs):
    t = time.time()
    out = fn(*args, **kwargs)
    return out, time.time() - t
