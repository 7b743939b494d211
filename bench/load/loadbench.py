#!/usr/bin/env python3
"""Load benchmark driver for the local stack (Python standard library only).

K concurrent clients each send M studies (the same archive) to POST /predict, one after the other.
Prints throughput, p50/p95 latency, the HTTP 429 count, peak RSS (VmHWM) of every stack process and
the per-study time spent outside preprocessing compute and model compute. `bench/load/run.sh` is
the entry point (it finds or generates the study and checks that the stack is up); see
bench/load/README.md for the overhead formula and what it includes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from http.client import HTTPConnection
from urllib.parse import urlsplit

SERVICES = ["preprocess-svc", "ctclip-svc", "supervised-svc", "diffusion-svc", "mednext-svc",
            "fvlm-svc", "ensemble-svc", "gateway"]
MODEL_COMPUTE_STAGES = ("recipe", "infer", "postprocess")
# preprocess-svc's compute stages (ct_preprocess_stage_seconds); receive and shared_write are transfers
PREPROCESS_COMPUTE_STAGES = ("open_archive", "headers", "decode_assemble", "lungs", "nifti")


# ---- statistics ------------------------------------------------------------------------------------

def percentile(values, q):
    """q-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be in [0, 100]")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# ---- Prometheus text format -------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?\s*$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text):
    """{(name, frozenset(labels.items())): value} for every sample line."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels = m.group(1), m.group(3) or ""
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        lab = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(labels)}
        out[(name, frozenset(lab.items()))] = value
    return out


def histogram_deltas(before, after):
    """Per histogram series (name without _sum/_count, labels): (delta sum, delta count) between two
    scrapes; only series whose count grew."""
    res = {}
    for (name, labels), v in after.items():
        if not name.endswith("_count"):
            continue
        base = name[: -len("_count")]
        s_after = after.get((base + "_sum", labels))
        if s_after is None:
            continue
        c0 = before.get((name, labels), 0.0)
        s0 = before.get((base + "_sum", labels), 0.0)
        dc, ds = v - c0, s_after - s0
        if dc > 0:
            res[(base, labels)] = (ds, dc)
    return res


def mean_by_label(deltas, metric, label, extra=None):
    """{label value: mean seconds per observation} for histogram `metric` (optionally filtered by
    extra labels)."""
    out = {}
    for (name, labels), (s, c) in deltas.items():
        if name != metric:
            continue
        d = dict(labels)
        if extra and any(d.get(k) != v for k, v in extra.items()):
            continue
        if label in d:
            out[d[label]] = s / c
    return out


# ---- the overhead formula ---------------------------------------------------------------------------

def overhead_per_study(latency_mean_s, preprocess_compute_s, model_compute_s):
    """Time per study outside compute:
         overhead = mean end-to-end latency (client, successful studies, last try)
                    - preprocess compute (preprocess-svc's own stage timings for this study)
                    - max over the model services of their compute (recipe + infer + postprocess)
    The five models run concurrently, so only the slowest one is on the critical path. What remains is
    HTTP intake (upload + multipart parsing), the gRPC transfers (archive to preprocess-svc, volume to
    each model service, scores to ensemble-svc), fan-out/queueing, the ensemble and the answer.
    Returns None when a term is unknown."""
    if latency_mean_s is None or preprocess_compute_s is None or not model_compute_s:
        return None
    return latency_mean_s - preprocess_compute_s - max(model_compute_s.values())


def model_compute(model_deltas):
    """{model: mean seconds of recipe + infer + postprocess per study} from ct_model_stage_seconds."""
    per = {}
    for (name, labels), (s, c) in model_deltas.items():
        if name != "ct_model_stage_seconds":
            continue
        d = dict(labels)
        if d.get("stage") in MODEL_COMPUTE_STAGES:
            per.setdefault(d.get("model", "?"), {})[d["stage"]] = s / c
    return {m: sum(st.values()) for m, st in per.items()}


def preprocess_compute(deltas):
    """Mean seconds per study of preprocess-svc's compute stages (ct_preprocess_stage_seconds),
    or None when the service does not export them."""
    means = mean_by_label(deltas, "ct_preprocess_stage_seconds", "stage")
    got = [v for k, v in means.items() if k in PREPROCESS_COMPUTE_STAGES]
    return sum(got) if got else None


# ---- processes --------------------------------------------------------------------------------------

def stack_processes(names, proc_root="/proc"):
    """{pid: name} of processes whose comm (or argv[0] base name) is one of `names`."""
    found = {}
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return found
    for pid in entries:
        if not pid.isdigit():
            continue
        base = os.path.join(proc_root, pid)
        cands = []
        try:
            with open(os.path.join(base, "comm")) as fh:
                cands.append(fh.read().strip())
        except OSError:
            continue
        try:
            with open(os.path.join(base, "cmdline"), "rb") as fh:
                argv0 = fh.read().split(b"\0")[0].decode(errors="replace")
                cands.append(os.path.basename(argv0))
        except OSError:
            pass
        for c in cands:
            if c in names:
                found[int(pid)] = c
                break
    return found


def read_status_kib(pid, keys=("VmHWM", "VmRSS", "RssShmem"), proc_root="/proc"):
    """{key: KiB} from /proc/<pid>/status."""
    out = {}
    try:
        with open(os.path.join(proc_root, str(pid), "status")) as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def read_cpu_seconds(pid, proc_root="/proc"):
    """(user, system) CPU seconds a process has used so far, from /proc/<pid>/stat; None if gone."""
    try:
        with open(os.path.join(proc_root, str(pid), "stat")) as fh:
            text = fh.read()
        # the command name (field 2) may hold spaces: fields after its closing parenthesis
        fields = text[text.rindex(")") + 2:].split()
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        return int(fields[11]) / tick, int(fields[12]) / tick
    except (OSError, ValueError, IndexError):
        return None


def reset_peak_rss(pid, proc_root="/proc"):
    """Resets VmHWM to the current RSS (Linux: write 5 to clear_refs). True when it worked."""
    try:
        with open(os.path.join(proc_root, str(pid), "clear_refs"), "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---- HTTP -------------------------------------------------------------------------------------------

def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def scrape(url):
    """Parsed /metrics of `url`, or None when it does not answer."""
    try:
        status, body = http_get(url.rstrip("/") + "/metrics")
    except (OSError, urllib.error.URLError):
        return None
    return parse_prometheus(body.decode(errors="replace")) if status == 200 else None


def multipart_body(path, field_name="file"):
    boundary = "ctbench" + uuid.uuid4().hex
    with open(path, "rb") as fh:
        data = fh.read()
    name = os.path.basename(path)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{name}\"\r\n"
            "Content-Type: application/zip\r\n\r\n").encode()
    return boundary, head + data + f"\r\n--{boundary}--\r\n".encode()


@dataclass
class Result:
    client: int
    status: int            # final HTTP status (0: no answer)
    ok: bool               # 200 and processing_status == Success
    latency_s: float       # first try to final answer, 429 waits included
    last_try_s: float      # the final try alone
    throttled: int         # 429 answers before the final one
    error: str = ""


def send_study(url, boundary, body, timeout, max_429_retries=100):
    """POSTs one study; on 429 waits Retry-After (default 0.5 s) and tries again."""
    parts = urlsplit(url)
    t0 = time.perf_counter()
    throttled = 0
    while True:
        t_try = time.perf_counter()
        conn = HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
        try:
            conn.request("POST", "/predict", body=body,
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                  "Content-Length": str(len(body))})
            resp = conn.getresponse()
            raw = resp.read()
            status, retry_after = resp.status, resp.getheader("Retry-After")
        except OSError as e:
            now = time.perf_counter()
            return Result(0, 0, False, now - t0, now - t_try, throttled, f"{type(e).__name__}: {e}")
        finally:
            conn.close()
        now = time.perf_counter()
        if status == 429 and throttled < max_429_retries:
            throttled += 1
            try:
                wait = float(retry_after) if retry_after is not None else 0.5
            except ValueError:
                wait = 0.5
            time.sleep(min(max(wait, 0.05), 30.0))
            continue
        ok, err = False, ""
        try:
            j = json.loads(raw)
            ok = status == 200 and j.get("processing_status") == "Success"
            if not ok:
                err = str(j.get("error_type") or j.get("error") or j.get("detail") or "")
        except ValueError:
            err = raw[:200].decode(errors="replace")
        return Result(0, status, ok, now - t0, now - t_try, throttled, err)


def run_load(url, boundary, body, clients, studies, timeout):
    results, lock = [], threading.Lock()

    def worker(k):
        for _ in range(studies):
            r = send_study(url, boundary, body, timeout)
            r.client = k
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


# ---- preprocess compute calibration -------------------------------------------------------------

def calibrate_preprocess(binary, study, runs):
    """Median over `runs` of the sum of `preprocess-svc inspect`'s stage timings (ms -> s): the
    compute preprocess-svc spends on this study, without any transfer."""
    if not binary or not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        return None, f"{binary} not found (build it: cargo build --release -p preprocess-svc)"
    totals = []
    for _ in range(runs):
        p = subprocess.run([binary, "inspect", study], capture_output=True, text=True)
        if p.returncode != 0:
            return None, f"'{binary} inspect' failed: {p.stdout.strip()[:300]} {p.stderr.strip()[-300:]}"
        t = json.loads(p.stdout).get("timings_ms") or {}
        totals.append(sum(float(v) for v in t.values()) / 1000.0)
    return statistics.median(totals), None


# ---- main -------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Load benchmark of the local stack (see bench/load/README.md).")
    p.add_argument("--url", default=os.environ.get("CT_BENCH_URL", "http://127.0.0.1:8000"), help="gateway base URL")
    p.add_argument("--admin-url", default=os.environ.get("CT_BENCH_ADMIN_URL", "http://127.0.0.1:9100"),
                   help="gateway admin URL (/metrics)")
    p.add_argument("--model-admin", default="ctclip=http://127.0.0.1:9102,supervised=http://127.0.0.1:9103,"
                   "diffusion=http://127.0.0.1:9104,mednext=http://127.0.0.1:9105,fvlm=http://127.0.0.1:9106",
                   help="name=url,... of the model services' admin ports")
    p.add_argument("--ensemble-admin", default="http://127.0.0.1:9107", help="ensemble-svc admin URL")
    p.add_argument("--preprocess-admin", default="http://127.0.0.1:9101", help="preprocess-svc admin URL")
    p.add_argument("--study", required=True, help="the study archive (ZIP) to send")
    p.add_argument("--clients", "-k", type=int, default=1, help="concurrent clients (K)")
    p.add_argument("--studies", "-m", type=int, default=5, help="studies per client (M)")
    p.add_argument("--warmup", type=int, default=1, help="studies sent before measuring")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    p.add_argument("--preprocess-bin", default="target/release/preprocess-svc",
                   help="preprocess-svc binary for the compute calibration ('' = skip)")
    p.add_argument("--calibration-runs", type=int, default=3)
    p.add_argument("--services", default=",".join(SERVICES), help="process names whose peak RSS is reported")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    if a.clients < 1 or a.studies < 1 or a.warmup < 0 or a.calibration_runs < 1:
        p.error("--clients and --studies must be >= 1, --warmup >= 0, --calibration-runs >= 1")
    if urlsplit(a.url).scheme != "http":
        p.error("--url must be http://host:port")
    return a


def parse_named_urls(s):
    out = {}
    for item in filter(None, (x.strip() for x in s.split(","))):
        name, sep, url = item.partition("=")
        if not sep:
            raise ValueError(f"expected name=url, got {item!r}")
        out[name] = url
    return out


def fmt_s(v, unit="s", scale=1.0, nd=3):
    return "n/a" if v is None else f"{v * scale:.{nd}f} {unit}"


def main(argv=None):
    a = parse_args(argv)
    try:
        status, _ = http_get(a.url.rstrip("/") + "/health", timeout=5)
        if status != 200:
            raise OSError(f"HTTP {status}")
    except (OSError, urllib.error.URLError) as e:
        print(f"loadbench: the stack is not up at {a.url} ({e}).\n"
              f"  Start it first in another terminal:  deploy/local/up", file=sys.stderr)
        return 2
    if not os.path.isfile(a.study):
        print(f"loadbench: study {a.study} not found", file=sys.stderr)
        return 2
    model_admin = parse_named_urls(a.model_admin)
    names = set(filter(None, a.services.split(",")))

    print(f"study: {a.study} ({os.path.getsize(a.study) / 1e6:.1f} MB); gateway {a.url}; "
          f"{a.clients} client(s) x {a.studies} studies, warm-up {a.warmup}", file=sys.stderr)
    pre_s, pre_note = (None, "skipped (--preprocess-bin '')")
    if a.preprocess_bin:
        print(f"calibrating preprocess compute ({a.calibration_runs} x inspect) ...", file=sys.stderr)
        pre_s, pre_note = calibrate_preprocess(a.preprocess_bin, a.study, a.calibration_runs)
    if pre_note:
        print(f"warning: preprocess compute unknown: {pre_note}", file=sys.stderr)

    boundary, body = multipart_body(a.study)
    for i in range(a.warmup):
        r = send_study(a.url, boundary, body, a.timeout)
        print(f"warm-up {i + 1}/{a.warmup}: HTTP {r.status} {r.latency_s:.3f} s {r.error}", file=sys.stderr)
        if not r.ok:
            print("loadbench: the warm-up study failed; fix the stack (or the study) first", file=sys.stderr)
            return 1

    procs = stack_processes(names)
    missing = sorted(names - set(procs.values()))
    reset = {pid: reset_peak_rss(pid) for pid in procs}
    cpu0 = {pid: read_cpu_seconds(pid) for pid in procs}
    gw0 = scrape(a.admin_url)
    models0 = {m: scrape(u) for m, u in model_admin.items()}
    ens0 = scrape(a.ensemble_admin)
    pre0 = scrape(a.preprocess_admin)

    results, wall = run_load(a.url, boundary, body, a.clients, a.studies, a.timeout)

    gw1 = scrape(a.admin_url)
    models1 = {m: scrape(u) for m, u in model_admin.items()}
    ens1 = scrape(a.ensemble_admin)
    pre1 = scrape(a.preprocess_admin)
    rss = {pid: read_status_kib(pid) for pid in procs}
    cpu1 = {pid: read_cpu_seconds(pid) for pid in procs}

    ok = [r for r in results if r.ok]
    # CPU time per successful study of each process (user, system): unlike wall times, it does not
    # grow when other work shares the machine, so it shows where the transfers' cost goes.
    cpu_per_study = {}
    for pid in procs:
        if ok and cpu0.get(pid) and cpu1.get(pid):
            u, sy = (b - a0 for a0, b in zip(cpu0[pid], cpu1[pid]))
            cpu_per_study[f"{procs[pid]}[{pid}]"] = {"user": u / len(ok), "system": sy / len(ok)}
    lat = [r.latency_s for r in ok]
    last = [r.last_try_s for r in ok]
    n429 = sum(r.throttled for r in results) + sum(1 for r in results if r.status == 429)
    failures = {}
    for r in results:
        if not r.ok:
            key = f"HTTP {r.status} {r.error}".strip()
            failures[key] = failures.get(key, 0) + 1

    model_deltas = {}
    for m in model_admin:
        if models0.get(m) is not None and models1.get(m) is not None:
            for (name, labels), v in histogram_deltas(models0[m], models1[m]).items():
                lab = dict(labels)
                lab.setdefault("model", m)
                model_deltas[(name, frozenset(lab.items()))] = v
    per_model = model_compute(model_deltas)
    ens_mean = None
    if ens0 is not None and ens1 is not None:
        d = histogram_deltas(ens0, ens1)
        vals = [s / c for (n, _), (s, c) in d.items() if n == "ct_ensemble_combine_seconds"]
        ens_mean = vals[0] if vals else None
    gw_hist = histogram_deltas(gw0, gw1) if gw0 is not None and gw1 is not None else {}
    gw_stages = mean_by_label(gw_hist, "ct_gateway_stage_seconds", "stage")
    pre_svc, pre_in_service, pre_stages = None, None, {}
    if pre0 is not None and pre1 is not None:
        pre_deltas = histogram_deltas(pre0, pre1)
        vals = [s / c for (n, _), (s, c) in pre_deltas.items() if n == "ct_preprocess_seconds"]
        pre_svc = vals[0] if vals else None
        pre_in_service = preprocess_compute(pre_deltas)
        pre_stages = mean_by_label(pre_deltas, "ct_preprocess_stage_seconds", "stage")
    # the compute term: preprocess-svc's own stage timings during the load (like the models'),
    # else the idle-machine calibration
    pre_calibrated = pre_s
    if pre_in_service is not None:
        pre_s, pre_source = pre_in_service, "in-service"
    else:
        pre_source = "calibration"

    lat_mean = statistics.fmean(last) if last else None
    overhead = overhead_per_study(lat_mean, pre_s, per_model)
    # The same with the gateway's own end-to-end time (from its first byte to its answer).
    overhead_gw = overhead_per_study(gw_stages.get("total"), pre_s, per_model)
    report = {
        "study": os.path.abspath(a.study), "study_bytes": os.path.getsize(a.study),
        "clients": a.clients, "studies_per_client": a.studies, "requests": len(results),
        "ok": len(ok), "failures": failures, "http_429": n429, "wall_s": wall,
        "throughput_studies_per_s": len(ok) / wall if wall > 0 else None,
        "latency_s": {"p50": percentile(lat, 50), "p95": percentile(lat, 95), "mean": statistics.fmean(lat) if lat else None,
                      "max": max(lat) if lat else None},
        "last_try_latency_mean_s": lat_mean,
        "preprocess_compute_s": pre_s, "preprocess_compute_source": pre_source,
        "preprocess_compute_calibrated_s": pre_calibrated, "preprocess_compute_note": pre_note,
        "preprocess_stage_mean_s": pre_stages,
        "model_compute_s": per_model, "ensemble_combine_s": ens_mean,
        "overhead_per_study_s": overhead,
        "overhead_gateway_view_s": overhead_gw,
        "gateway_stage_mean_s": gw_stages,
        "preprocess_service_receive_prepare_s": pre_svc,
        "overhead_formula": "mean last-try latency - preprocess compute - max(model recipe+infer+postprocess)",
        "gateway_histograms_mean_s": {f"{n}{{{','.join(f'{k}={v}' for k, v in sorted(l))}}}": s / c
                                      for (n, l), (s, c) in sorted(gw_hist.items(), key=lambda x: x[0][0])},
        "peak_rss_mib": {f"{procs[p]}[{p}]": round(v.get("VmHWM", 0) / 1024, 1) for p, v in sorted(rss.items(), key=lambda x: procs[x[0]])},
        # pages of shared tmpfs files mapped at the end (one-machine mode): counted in every
        # process that maps them, but in memory once
        "rss_shmem_mib": {f"{procs[p]}[{p}]": round(v.get("RssShmem", 0) / 1024, 1) for p, v in sorted(rss.items(), key=lambda x: procs[x[0]])},
        "peak_rss_reset_before_load": all(reset.values()) if reset else False,
        "cpu_s_per_study": dict(sorted(cpu_per_study.items())),
        "processes_not_found": missing,
        "machine": {"cpus": os.cpu_count()},
    }

    print()
    print(f"requests {len(results)}: ok {len(ok)}, failed {len(results) - len(ok)}, HTTP 429 answers {n429}")
    for k, v in failures.items():
        print(f"  failed: {v} x {k}")
    print(f"wall {wall:.2f} s  throughput {report['throughput_studies_per_s'] or 0:.3f} studies/s "
          f"({(report['throughput_studies_per_s'] or 0) * 60:.1f}/min)")
    print(f"latency p50 {fmt_s(report['latency_s']['p50'])}  p95 {fmt_s(report['latency_s']['p95'])}  "
          f"mean {fmt_s(report['latency_s']['mean'])}  (first try to answer, 429 waits included)")
    print("per study (means):")
    print(f"  end-to-end, last try          {fmt_s(lat_mean, 'ms', 1000, 1)}")
    if pre_source == "in-service":
        print(f"  preprocess compute            {fmt_s(pre_s, 'ms', 1000, 1)}  (preprocess-svc's compute stages during the load)")
    print(f"  preprocess compute, CLI       {fmt_s(pre_calibrated, 'ms', 1000, 1)}  (preprocess-svc inspect on the idle machine, median"
          f"{'; used' if pre_source == 'calibration' else '; for reference'})")
    for st, v in sorted(pre_stages.items()):
        print(f"    preprocess-svc {st:<14} {fmt_s(v, 'ms', 1000, 1)}")
    print(f"  preprocess-svc receive+prepare {fmt_s(pre_svc, 'ms', 1000, 1)} (ct_preprocess_seconds, for reference)")
    for m, v in sorted(per_model.items()):
        print(f"  model compute {m:<15} {fmt_s(v, 'ms', 1000, 1)}  (recipe + infer + postprocess)")
    print(f"  ensemble combine              {fmt_s(ens_mean, 'ms', 1000, 1)}  (part of the overhead)")
    print(f"  OVERHEAD outside compute      {fmt_s(overhead, 'ms', 1000, 1)}  (target <= 200 ms at 1 client)")
    print(f"  same from the gateway's total {fmt_s(overhead_gw, 'ms', 1000, 1)}  (ct_gateway_stage_seconds{{stage=total}}; "
          "excludes the client's side of the upload)")
    if gw_hist:
        print("gateway histograms (mean per observation):")
        for k, v in report["gateway_histograms_mean_s"].items():
            if "_bytes" in k:
                print(f"  {k:<60} {v / 1e6:9.1f} MB")
            else:
                print(f"  {k:<60} {v * 1000:9.1f} ms")
    else:
        print(f"gateway histograms: none from {a.admin_url}/metrics")
    print("peak RSS (VmHWM" + (", reset before the load" if report["peak_rss_reset_before_load"] else ", process lifetime") + "):")
    shmem = report.get("rss_shmem_mib", {})
    for k, v in report["peak_rss_mib"].items():
        extra = f"  (of which shared tmpfs file pages at the end: {shmem[k]:.1f} MiB)" if shmem.get(k) else ""
        print(f"  {k:<28} {v:9.1f} MiB{extra}")
    if missing:
        print(f"  not found: {', '.join(missing)}")
    if cpu_per_study:
        print("CPU time per study (user + system, from /proc/<pid>/stat):")
        for k, v in report["cpu_s_per_study"].items():
            print(f"  {k:<28} {(v['user'] + v['system']) * 1000:9.1f} ms  (user {v['user'] * 1000:.1f}, system {v['system'] * 1000:.1f})")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(report, fh, indent=1)
            fh.write("\n")
        print(f"written: {a.json}")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
