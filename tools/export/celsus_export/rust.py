"""Runs an exported bundle through its Rust model service (`<svc> info` and `<svc> predict` on real
studies, CPU provider) and the converted ensemble through `ensemble-svc predict`. Torch-free."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from .contracts import SERVICE_BINARY

WARMUP = re.compile(r"warm-up done.*?ms=([0-9.]+)")
PREDICTED = re.compile(r"predicted.*?preprocess_ms=([0-9.]+).*?timings_ms=(\{[^}]*\})")


def service_env() -> dict:
    env = dict(os.environ)
    # the stage timings are read from the service's text log line `predicted ... timings_ms={...}`
    env.update({"CT_LOG": "info,ort=warn", "CT_LOG_FORMAT": "text", "CT_LOG_COLOR": "never"})
    if "ORT_DYLIB_PATH" not in env:
        root = Path(__file__).resolve().parents[3]
        libs = sorted((root / ".tools" / "ort").glob("libonnxruntime.so*"))
        if libs:
            env["ORT_DYLIB_PATH"] = str(libs[-1])
    return env


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def run_measured(cmd, env=None, timeout=1800):
    """(returncode, stdout, stderr, wall_s, peak_rss_mib) of one child process.

    The peak RSS is the child's own high-water mark (VmHWM, polled every 50 ms until it exits).
    Not `wait4`'s ru_maxrss: Linux carries the parent's high-water mark into a child over
    fork/exec, so a service spawned by a large exporter process would report the exporter's."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.time()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = t0 + timeout
        hwm = None
        while True:
            h = _vm_hwm_kib(p.pid)
            if h is not None:
                hwm = h
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
        wall = time.time() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        peak = hwm / 1024.0 if hwm is not None else usage.ru_maxrss / 1024.0
        return p.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"), wall, peak


def parse_timings(stderr: str) -> dict | None:
    """Stage timings the service logs with its prediction (`predicted ... timings_ms={...}`)."""
    for line in reversed(stderr.splitlines()):
        m = PREDICTED.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if m:
            t = json.loads(m.group(2))
            t["preprocess"] = float(m.group(1))
            return t
    return None


def check_values(model: str, values: dict, labels: list[str]) -> list[str]:
    problems = []
    for k, v in values.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            problems.append(f"{k} = {v!r}")
    unknown = [k for k in values if k not in labels]
    if unknown:
        problems.append(f"labels not in the manifest: {unknown[:5]}")
    return problems


def service_check(model: str, bundle: Path, studies: list[Path], bin_dir: Path, labels: list[str], timeout: int = 1800) -> dict:
    exe = Path(bin_dir) / SERVICE_BINARY[model]
    if not exe.is_file():
        return {"ok": False, "skipped": f"{exe} is not built (cargo build --release -p {SERVICE_BINARY[model]})"}
    env = service_env()
    # `predict` loads and verifies the bundle (hashes, manifest vs graph), warms up once on a
    # built-in phantom, preprocesses the study in-process and predicts
    res = {"ok": True, "binary": exe.name, "studies": []}
    for study in studies:
        rc, out, err, wall, rss = run_measured([str(exe), "predict", "--bundle", str(bundle), "--provider", "cpu", str(study)], env, timeout)
        entry = {"study": Path(study).name, "wall_s": round(wall, 2), "peak_rss_mib": round(rss)}
        if rc != 0:
            entry["error"] = (err.strip().splitlines() or ["?"])[-1]
            res["ok"] = False
        else:
            values = json.loads(out)
            entry["values"] = values
            entry["n_values"] = len(values)
            entry["timings_ms"] = parse_timings(err)
            w = WARMUP.search(re.sub(r"\x1b\[[0-9;]*m", "", err))
            entry["warmup_ms"] = float(w.group(1)) if w else None
            problems = check_values(model, values, labels)
            if problems:
                entry["problems"] = problems
                res["ok"] = False
        res["studies"].append(entry)
    return res


def ensemble_check(bundle: Path, scores: dict, bin_dir: Path) -> dict:
    exe = Path(bin_dir) / "ensemble-svc"
    if not exe.is_file():
        return {"ok": False, "skipped": f"{exe} is not built"}
    with tempfile.TemporaryDirectory() as d:
        sp = Path(d) / "scores.json"
        sp.write_text(json.dumps(scores))
        models = ",".join(sorted(scores)) or "supervised"
        rc, out, err, wall, _ = run_measured([str(exe), "predict", "--bundle", str(bundle), "--scores", str(sp),
                                              "--models", models, "--allow-unproducible-features"], service_env(), 600)
    if rc != 0:
        return {"ok": False, "error": (err.strip().splitlines() or ["?"])[-1]}
    return {"ok": True, "wall_s": round(wall, 2), "decision": json.loads(out)}
