"""Unit tests of the load benchmark driver (no stack needed): python3 -m unittest discover -s bench/load"""
import contextlib
import io
import os
import sys
import tempfile
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadbench as lb  # noqa: E402


def _write(path, data, mode=None):
    with open(path, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)
    if mode is not None:
        os.chmod(path, mode)


class Percentile(unittest.TestCase):
    def test_linear_interpolation(self):
        xs = [4.0, 1.0, 3.0, 2.0]              # sorted: 1 2 3 4
        self.assertEqual(lb.percentile(xs, 0), 1.0)
        self.assertEqual(lb.percentile(xs, 100), 4.0)
        self.assertAlmostEqual(lb.percentile(xs, 50), 2.5)
        self.assertAlmostEqual(lb.percentile(xs, 95), 3.85)   # numpy.percentile(..., 95)
        self.assertEqual(lb.percentile([7.0], 95), 7.0)
        self.assertIsNone(lb.percentile([], 50))
        self.assertAlmostEqual(lb.percentile(list(range(1, 101)), 95), 95.05)
        with self.assertRaises(ValueError):
            lb.percentile([1.0], 101)


METRICS_0 = """# HELP ct_model_stage_seconds Per-stage latency of Predict
# TYPE ct_model_stage_seconds histogram
ct_model_stage_seconds_bucket{model="ctclip",stage="infer",le="0.1"} 1
ct_model_stage_seconds_sum{model="ctclip",stage="infer"} 0.5
ct_model_stage_seconds_count{model="ctclip",stage="infer"} 1
ct_model_stage_seconds_sum{model="ctclip",stage="recipe"} 0.1
ct_model_stage_seconds_count{model="ctclip",stage="recipe"} 1
ct_model_stage_seconds_sum{model="ctclip",stage="receive"} 0.02
ct_model_stage_seconds_count{model="ctclip",stage="receive"} 1
ct_model_in_flight{model="ctclip"} 0
"""
METRICS_1 = """ct_model_stage_seconds_sum{model="ctclip",stage="infer"} 1.7
ct_model_stage_seconds_count{model="ctclip",stage="infer"} 4
ct_model_stage_seconds_sum{model="ctclip",stage="recipe"} 0.4
ct_model_stage_seconds_count{model="ctclip",stage="recipe"} 4
ct_model_stage_seconds_sum{model="ctclip",stage="postprocess"} 0.003
ct_model_stage_seconds_count{model="ctclip",stage="postprocess"} 3
ct_model_stage_seconds_sum{model="ctclip",stage="receive"} 0.02
ct_model_stage_seconds_count{model="ctclip",stage="receive"} 1
weird{a="x \\"quoted\\" y"} 2 1700000000000
"""


class Prometheus(unittest.TestCase):
    def test_parse(self):
        m = lb.parse_prometheus(METRICS_0 + 'weird{a="x \\"quoted\\" y"} 2 1700000000000\nnot a sample line\n')
        self.assertEqual(m[("ct_model_stage_seconds_count", frozenset({"model": "ctclip", "stage": "infer"}.items()))], 1.0)
        self.assertEqual(m[("ct_model_in_flight", frozenset({"model": "ctclip"}.items()))], 0.0)
        self.assertEqual(m[("weird", frozenset({"a": 'x "quoted" y'}.items()))], 2.0)

    def test_deltas_and_model_compute(self):
        d = lb.histogram_deltas(lb.parse_prometheus(METRICS_0), lb.parse_prometheus(METRICS_1))
        infer = d[("ct_model_stage_seconds", frozenset({"model": "ctclip", "stage": "infer"}.items()))]
        self.assertAlmostEqual(infer[0], 1.2)
        self.assertEqual(infer[1], 3)
        # receive did not grow: left out; postprocess is new (absent before = 0).
        self.assertNotIn(("ct_model_stage_seconds", frozenset({"model": "ctclip", "stage": "receive"}.items())), d)
        per = lb.model_compute(d)
        self.assertAlmostEqual(per["ctclip"], 1.2 / 3 + 0.3 / 3 + 0.003 / 3)
        means = lb.mean_by_label(d, "ct_model_stage_seconds", "stage", {"model": "ctclip"})
        self.assertAlmostEqual(means["infer"], 0.4)


class Overhead(unittest.TestCase):
    def test_preprocess_compute_from_the_services_stages(self):
        before = lb.parse_prometheus('ct_preprocess_stage_seconds_sum{stage="decode_assemble"} 1.0\n'
                                     'ct_preprocess_stage_seconds_count{stage="decode_assemble"} 2\n')
        after = lb.parse_prometheus('ct_preprocess_stage_seconds_sum{stage="decode_assemble"} 1.6\n'
                                    'ct_preprocess_stage_seconds_count{stage="decode_assemble"} 4\n'
                                    'ct_preprocess_stage_seconds_sum{stage="lungs"} 0.2\nct_preprocess_stage_seconds_count{stage="lungs"} 2\n'
                                    'ct_preprocess_stage_seconds_sum{stage="receive"} 9\nct_preprocess_stage_seconds_count{stage="receive"} 2\n'
                                    'ct_preprocess_stage_seconds_sum{stage="shared_write"} 9\n'
                                    'ct_preprocess_stage_seconds_count{stage="shared_write"} 2\n')
        # transfers (receive, shared_write) are not compute
        self.assertAlmostEqual(lb.preprocess_compute(lb.histogram_deltas(before, after)), 0.3 + 0.1)
        self.assertIsNone(lb.preprocess_compute(lb.histogram_deltas(before, before)))

    def test_formula(self):
        # 2.0 s end to end, 1.25 s preprocess, models run concurrently: the slowest (0.5 s) counts.
        self.assertAlmostEqual(lb.overhead_per_study(2.0, 1.25, {"a": 0.5, "b": 0.25}), 0.25)
        self.assertIsNone(lb.overhead_per_study(2.0, None, {"a": 0.5}))
        self.assertIsNone(lb.overhead_per_study(2.0, 1.0, {}))
        self.assertIsNone(lb.overhead_per_study(None, 1.0, {"a": 0.5}))


class Procs(unittest.TestCase):
    def test_find_and_read(self):
        with tempfile.TemporaryDirectory() as root:
            def proc(pid, comm, argv0, status):
                d = os.path.join(root, str(pid))
                os.makedirs(d)
                _write(os.path.join(d, "comm"), comm + "\n")
                _write(os.path.join(d, "cmdline"), argv0.encode() + b"\0serve\0")
                _write(os.path.join(d, "status"), status)
            proc(10, "gateway", "/x/target/release/gateway", "Name:\tgateway\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nRssShmem:\t 4096 kB\n")
            proc(11, "bash", "/bin/bash", "VmHWM:\t 10 kB\n")
            proc(12, "tokio-runtime-w", "/x/target/release/ctclip-svc", "VmHWM:\t 2048 kB\n")  # comm renamed by a thread
            os.makedirs(os.path.join(root, "self"))
            found = lb.stack_processes(set(lb.SERVICES), proc_root=root)
            self.assertEqual(found, {10: "gateway", 12: "ctclip-svc"})
            self.assertEqual(lb.read_status_kib(10, proc_root=root), {"VmHWM": 204800, "VmRSS": 102400, "RssShmem": 4096})
            self.assertEqual(lb.read_status_kib(99, proc_root=root), {})
            # a command name with spaces and parentheses; utime 250 and stime 50 ticks
            tick = os.sysconf("SC_CLK_TCK")
            _write(os.path.join(root, "10", "stat"), "10 (a (b) c) S 1 10 10 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0\n")
            self.assertEqual(lb.read_cpu_seconds(10, proc_root=root), (250 / tick, 50 / tick))
            self.assertIsNone(lb.read_cpu_seconds(99, proc_root=root))


class Args(unittest.TestCase):
    def test_parse(self):
        a = lb.parse_args(["--study", "s.zip", "-k", "4", "-m", "3"])
        self.assertEqual((a.clients, a.studies, a.url, a.admin_url), (4, 3, "http://127.0.0.1:8000", "http://127.0.0.1:9100"))
        self.assertEqual(lb.parse_named_urls(a.model_admin)["fvlm"], "http://127.0.0.1:9106")
        with self.assertRaises(SystemExit):
            lb.parse_args(["--study", "s.zip", "--clients", "0"])
        with self.assertRaises(SystemExit):
            lb.parse_args(["--study", "s.zip", "--url", "https://x"])
        with self.assertRaises(ValueError):
            lb.parse_named_urls("ctclip")


class _Fake(BaseHTTPRequestHandler):
    """/predict: 429 (Retry-After 0) on every 3rd call, else success; /health: 200."""
    calls = 0
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def do_GET(self):
        self._send(200, b'{"status":"healthy"}')

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(n)
        assert b'name="file"; filename="s.zip"' in body
        with _Fake.lock:
            _Fake.calls += 1
            c = _Fake.calls
        if c % 3 == 0:
            self._send(429, b'{"processing_status":"Failure","error_type":"overloaded"}', {"Retry-After": "0"})
        else:
            self._send(200, b'{"processing_status":"Success","probability_of_pathology":0.5}')

    def _send(self, code, body, headers=None):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class Load(unittest.TestCase):
    def test_clients_and_429(self):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            with tempfile.TemporaryDirectory() as d:
                study = os.path.join(d, "s.zip")
                _write(study, b"PK" + b"x" * 1000)
                boundary, body = lb.multipart_body(study)
                url = f"http://127.0.0.1:{srv.server_address[1]}"
                results, wall = lb.run_load(url, boundary, body, clients=3, studies=4, timeout=10)
            self.assertEqual(len(results), 12)
            self.assertTrue(all(r.ok for r in results))
            self.assertEqual(sorted({r.client for r in results}), [0, 1, 2])
            self.assertEqual(sum(r.throttled for r in results), _Fake.calls - 12)
            self.assertGreater(_Fake.calls, 12)
            self.assertGreater(wall, 0)
        finally:
            srv.shutdown()
            srv.server_close()

    def test_refuses_without_stack(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(lb.main(["--study", "x.zip", "--url", f"http://127.0.0.1:{port}"]), 2)
        self.assertIn("deploy/local/up", err.getvalue())


class _Stack(BaseHTTPRequestHandler):
    """A fake stack on one port: /health, /predict (counts studies) and /metrics with the gateway's,
    one model service's and the ensemble's histograms growing per study."""
    studies = 0
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/metrics":
            n = _Stack.studies
            body = (f'ct_model_stage_seconds_sum{{model="ctclip",stage="infer"}} {0.5 * n}\n'
                    f'ct_model_stage_seconds_count{{model="ctclip",stage="infer"}} {n}\n'
                    f'ct_model_stage_seconds_sum{{model="ctclip",stage="recipe"}} {0.1 * n}\n'
                    f'ct_model_stage_seconds_count{{model="ctclip",stage="recipe"}} {n}\n'
                    f'ct_model_stage_seconds_sum{{model="ctclip",stage="queue"}} {9.0 * n}\n'
                    f'ct_model_stage_seconds_count{{model="ctclip",stage="queue"}} {n}\n'
                    f'ct_ensemble_combine_seconds_sum {0.01 * n}\nct_ensemble_combine_seconds_count {n}\n'
                    f'ct_gateway_stage_seconds_sum{{stage="preprocess"}} {0.3 * n}\n'
                    f'ct_gateway_stage_seconds_count{{stage="preprocess"}} {n}\n'
                    f'ct_gateway_stage_seconds_sum{{stage="total"}} {1.0 * n}\n'
                    f'ct_gateway_stage_seconds_count{{stage="total"}} {n}\n'
                    f'ct_preprocess_seconds_sum {0.4 * n}\nct_preprocess_seconds_count {n}\n'
                    f'ct_preprocess_stage_seconds_sum{{stage="decode_assemble"}} {0.2 * n}\n'
                    f'ct_preprocess_stage_seconds_count{{stage="decode_assemble"}} {n}\n'
                    f'ct_preprocess_stage_seconds_sum{{stage="receive"}} {0.1 * n}\n'
                    f'ct_preprocess_stage_seconds_count{{stage="receive"}} {n}\n').encode()
        else:
            body = b'{"status":"healthy"}'
        self._send(200, body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with _Stack.lock:
            _Stack.studies += 1
        self._send(200, b'{"processing_status":"Success"}')

    _send = _Fake._send


class Main(unittest.TestCase):
    def test_end_to_end_against_a_fake_stack(self):
        import json
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stack)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            with tempfile.TemporaryDirectory() as d:
                study = os.path.join(d, "s.zip")
                _write(study, b"PK" + b"x" * 100)
                fake_bin = os.path.join(d, "preprocess-svc")
                _write(fake_bin, '#!/bin/sh\necho \'{"timings_ms": {"headers": 100.0, "decode_assemble": 150.0}}\'\n', 0o755)
                out = os.path.join(d, "r.json")
                url = f"http://127.0.0.1:{srv.server_address[1]}"
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    rc = lb.main(["--study", study, "--url", url, "--admin-url", url, "--model-admin", f"ctclip={url}",
                                  "--ensemble-admin", url, "--preprocess-admin", url, "--preprocess-bin", fake_bin, "-k", "2", "-m", "3",
                                  "--warmup", "1", "--json", out])
                self.assertEqual(rc, 0)
                with open(out) as fh:
                    r = json.load(fh)
            self.assertEqual((r["requests"], r["ok"], r["http_429"]), (6, 6, 0))
            # the service's compute stages during the load (decode_assemble; receive is a transfer),
            # the idle calibration is reported beside it
            self.assertAlmostEqual(r["preprocess_compute_s"], 0.2)
            self.assertEqual(r["preprocess_compute_source"], "in-service")
            self.assertAlmostEqual(r["preprocess_compute_calibrated_s"], 0.25)
            # recipe + infer (queue is waiting, not compute).
            self.assertAlmostEqual(r["model_compute_s"]["ctclip"], 0.6)
            self.assertAlmostEqual(r["ensemble_combine_s"], 0.01)
            self.assertAlmostEqual(r["overhead_per_study_s"], r["last_try_latency_mean_s"] - 0.2 - 0.6)
            self.assertAlmostEqual(r["gateway_histograms_mean_s"]['ct_gateway_stage_seconds{stage=preprocess}'], 0.3)
            self.assertLessEqual(r["latency_s"]["p50"], r["latency_s"]["p95"])
            self.assertAlmostEqual(r["overhead_gateway_view_s"], 1.0 - 0.2 - 0.6)
            self.assertAlmostEqual(r["gateway_stage_mean_s"]["total"], 1.0)
            self.assertAlmostEqual(r["preprocess_service_receive_prepare_s"], 0.4)
        finally:
            srv.shutdown()
            srv.server_close()


if __name__ == "__main__":
    unittest.main()
