"""Model bundle writing (docs/model-bundle.md, format 1): manifest.toml + model.onnx (+ files).

No torch here: this module is what the torch-free tests exercise.

A bundle directory is complete when it has a manifest: `write_manifest` removes an old manifest
before the model is (re)written (`begin_bundle`) and writes the new one last, atomically.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from pathlib import Path

FORMAT = 1
CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


# -- a small TOML writer (the subset manifests use) ------------------------------------------------
def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        r = repr(v)
        return r if any(c in r for c in ".eE") else r + ".0"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        items = [toml_value(x) for x in v]
        one_line = "[" + ", ".join(items) + "]"
        if len(one_line) <= 100:
            return one_line
        return "[\n" + "".join(f"    {x},\n" for x in items) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML: {v!r}")


def toml_key(k: str) -> str:
    if k and all(c.isalnum() or c in "_-" for c in k):
        return k
    return json.dumps(k, ensure_ascii=False)


def toml_table(name: str, table: dict, array: bool = False) -> list[str]:
    lines = [f"[[{name}]]" if array else f"[{name}]"]
    for k, v in table.items():
        if v is None:
            continue
        if isinstance(v, dict):
            raise TypeError(f"nested table {name}.{k} is not supported")
        lines.append(f"{toml_key(k)} = {toml_value(v)}")
    lines.append("")
    return lines


def render_manifest(m: dict) -> str:
    """TOML text of a manifest dict with keys: model, files, inputs, outputs, labels, recipe and
    optional extra sections (e.g. fvlm, provenance, verification), in the documented order."""
    for key in ("model", "files", "inputs", "outputs", "labels", "recipe"):
        if key not in m:
            raise ValueError(f"manifest lacks [{key}]")
    if "model.onnx" not in m["files"]:
        raise ValueError("[files] must list model.onnx")
    lines = [f"format = {FORMAT}", ""]
    lines += toml_table("model", m["model"])
    lines += toml_table("files", m["files"])
    for t in m["inputs"]:
        lines += toml_table("inputs", t, array=True)
    for t in m["outputs"]:
        lines += toml_table("outputs", t, array=True)
    lines += toml_table("labels", m["labels"])
    lines += toml_table("recipe", m["recipe"])
    for key, table in m.items():
        if key in ("format", "model", "files", "inputs", "outputs", "labels", "recipe"):
            continue
        lines += toml_table(key, table)
    return "\n".join(lines).rstrip("\n") + "\n"


def begin_bundle(out: str | os.PathLike, stale=("model.onnx",)) -> Path:
    """Creates the directory and removes an old manifest (the bundle is incomplete until the new
    one is written) and the files about to be rewritten (`stale`; saves disk for large graphs)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.toml", *stale):
        p = out / name
        if p.exists():
            p.unlink()
    return out


def write_manifest(out: str | os.PathLike, manifest: dict, files=("model.onnx",)) -> Path:
    """Hashes `files` (relative to `out`) into [files] and writes manifest.toml last (atomically)."""
    out = Path(out)
    m = dict(manifest)
    hashes = {}
    for f in files:
        p = out / f
        if not p.is_file():
            raise FileNotFoundError(f"bundle file {p} is missing")
        hashes[str(f)] = sha256_file(p)
    m["files"] = hashes
    text = render_manifest(m)
    tmp = out / "manifest.toml.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "manifest.toml")
    return out / "manifest.toml"


def verify_files(out: str | os.PathLike, manifest: dict) -> list[str]:
    """Files whose sha256 differs from [files] (or that are missing)."""
    bad = []
    for f, h in manifest.get("files", {}).items():
        p = Path(out) / f
        if not p.is_file() or sha256_file(p) != h:
            bad.append(f)
    return bad


def provenance(*, tool: str, tool_version: str, model: str, checkpoints: dict, opset: int, repo_commit: str | None,
               versions: dict, notes: list[str] | None = None, now: _dt.datetime | None = None) -> dict:
    """[provenance]: where the graph came from. `checkpoints` maps a role (checkpoint, config,
    mae_weights, text_encoder, ...) to a path (file or directory); each gets its name and sha256
    (a directory: sha256 over its files' relative paths and hashes, sorted)."""
    p = {"exporter": tool, "exporter_version": tool_version, "model": model}
    for role, path in checkpoints.items():
        if path is None:
            continue
        path = Path(path)
        p[f"{role}"] = path.name
        p[f"{role}_sha256"] = sha256_path(path)
    p["onnx_opset"] = int(opset)
    p["reference_commit"] = repo_commit or "unknown"
    for k, v in versions.items():
        p[k] = str(v)
    p["exported_at"] = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if notes:
        p["notes"] = list(notes)
    return p


def sha256_path(path: str | os.PathLike) -> str:
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
        return h.hexdigest()
    raise FileNotFoundError(path)


def is_random_weights(path: str | os.PathLike) -> bool:
    """True when `path` lies in a directory written by `random-checkpoints` (marker file)."""
    path = Path(path)
    d = path if path.is_dir() else path.parent
    for p in (d, d.parent):
        if (p / RANDOM_MARKER).is_file():
            return True
    return False


RANDOM_MARKER = "RANDOM_WEIGHTS_NOT_A_MEDICAL_MODEL.txt"
