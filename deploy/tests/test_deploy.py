"""Invariants of deploy/: the Dockerfile, the compose file and the rendered Kubernetes overlays.

Run by deploy/check, which renders the overlays and the compose file into DEPLOY_CHECK_OUT and names
the directory of the service binaries in CT_DEPLOY_BIN_DIR. Every port, flag and CT_* variable the
manifests use is checked against what the binaries print in `--help` (or, for variables that are not
clap flags such as CT_LOG, against the binary itself), so a renamed flag breaks this test, not a
deployment.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import unittest
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OUT = Path(os.environ.get("DEPLOY_CHECK_OUT", ROOT / ".tools/deploycheck/out"))
BIN_DIR = os.environ.get("CT_DEPLOY_BIN_DIR")

MODELS = ["ctclip", "supervised", "diffusion", "mednext", "fvlm"]
MODEL_SERVICES = [f"{m}-svc" for m in MODELS]
SERVICES = ["preprocess-svc", *MODEL_SERVICES, "ensemble-svc", "gateway"]
# the services that load a bundle from /models, and which one
BUNDLES = {**{f"{m}-svc": m for m in MODELS}, "ensemble-svc": "ensemble"}
# (address variable of the served API, address variable of the admin port) per service
ADDR_ENV = {
    "preprocess-svc": ("CT_PREPROCESS_ADDR", "CT_ADMIN_ADDR"),
    **{s: ("CT_GRPC_ADDR", "CT_ADMIN_ADDR") for s in MODEL_SERVICES},
    "ensemble-svc": ("CT_ENSEMBLE_ADDR", "CT_ENSEMBLE_ADMIN_ADDR"),
    "gateway": ("CT_GATEWAY_ADDR", "CT_GATEWAY_ADMIN_ADDR"),
}
BUNDLE_ENV = {**{s: "CT_BUNDLE" for s in MODEL_SERVICES}, "ensemble-svc": "CT_ENSEMBLE_BUNDLE"}
GATEWAY_URL_ENV = {
    "CT_PREPROCESS_URL": "preprocess-svc",
    **{f"CT_{m.upper()}_URL": f"{m}-svc" for m in MODELS},
    "CT_ENSEMBLE_URL": "ensemble-svc",
}
# Kubernetes: the gateway dials a headless twin of each upstream's Service (one address per ready
# pod) and balances over the addresses itself (CT_UPSTREAM_DISCOVERY=dns)
HEADLESS = {s: f"{s}-headless" for s in GATEWAY_URL_ENV.values()}
# variables our binaries read outside clap (checked to occur in the binary): the log settings of
# crates/ct-service, the ONNX Runtime library of `ort`
NON_CLAP_ENV = {"CT_LOG", "CT_LOG_FORMAT", "CT_LOG_COLOR", "ORT_DYLIB_PATH"}
# variables for the CUDA runtime, not for our code
FOREIGN_ENV = {"CUDA_CACHE_PATH"}
OVERLAYS = ["cpu", "gpu", "gpu-custom-metrics"]
GPU_OVERLAYS = ["gpu", "gpu-custom-metrics"]
GPU = "nvidia.com/gpu"


# ------------------------------------------------------------------------------------------------
# the binaries


class Help:
    """What `<bin> serve --help` says: flags, their CT_* variables, defaults and possible values."""

    def __init__(self, service: str, top: str, serve: str, binary: Path):
        self.service = service
        self.top = top
        self.binary = binary
        self.flags: dict[str, dict] = {}  # "--addr" -> {"env", "default", "values", "text"}
        self.env: dict[str, dict] = {}  # "CT_GRPC_ADDR" -> same dict
        blocks: list[list[str]] = []
        for line in serve.splitlines():
            if re.match(r"^\s{2,}(-\w, )?--[\w-]+", line):
                blocks.append([line])
            elif blocks:
                blocks[-1].append(line)
        for block in blocks:
            text = "\n".join(block)
            names = re.findall(r"--([\w-]+)", block[0])
            info = {
                "text": text,
                "env": (re.search(r"\[env: (\w+)=", text) or [None, None])[1],
                "default": (re.search(r"\[default: ([^\]]*)\]", text) or [None, None])[1],
                "values": re.findall(r"^\s+- (\w[\w-]*):", text, re.M),
            }
            aliases = re.findall(r"\[(?:alias|aliases): ([^\]]*)\]", text)
            for a in aliases:
                names += [n.strip().lstrip("-") for n in a.split(",")]
            for n in names:
                self.flags["--" + n] = info
            if info["env"]:
                self.env[info["env"]] = info

    @functools.cached_property
    def _bytes(self) -> bytes:
        return self.binary.read_bytes()

    def contains(self, text: str) -> bool:
        return text.encode() in self._bytes

    def reads_env(self, name: str) -> bool:
        """A clap variable of `serve`, or one of NON_CLAP_ENV that the binary contains."""
        return name in self.env or (name in NON_CLAP_ENV and self.contains(name))

    def subcommands(self) -> set[str]:
        m = re.search(r"^Commands:\n((?:\s+.*\n)+)", self.top + "\n", re.M)
        return {line.split()[0] for line in m.group(1).splitlines() if line.strip()} if m else set()


@functools.lru_cache(maxsize=None)
def help_of(service: str) -> Help:
    if not BIN_DIR:
        raise unittest.SkipTest("CT_DEPLOY_BIN_DIR is not set (deploy/check sets it)")
    binary = Path(BIN_DIR) / service
    if not binary.is_file():
        raise AssertionError(f"{binary} does not exist: build the services or set CT_DEPLOY_BIN_DIR")
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no CT_* values shown as defaults

    def run(*args):
        return subprocess.run([str(binary), *args], env=clean, capture_output=True, text=True, check=True, timeout=60).stdout

    return Help(service, run("--help"), run("serve", "--help"), binary)


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def binary_ports() -> dict[str, tuple[int, int]]:
    """(API port, admin port) of every service, from the binaries' own defaults."""
    ports = {}
    for s in ("preprocess-svc", "ensemble-svc", "gateway"):
        h = help_of(s)
        api, admin = (port_of(h.env[e]["default"]) for e in ADDR_ENV[s])
        ports[s] = (api, admin)
    g = help_of("gateway")
    for env, s in GATEWAY_URL_ENV.items():
        port = urlparse(g.env[env]["default"]).port
        if s in MODEL_SERVICES:
            # model services: admin default is 127.0.0.1:<9100 + service number> (serve --help)
            text = help_of(s).env["CT_ADMIN_ADDR"]["text"]
            assert "9100 + service number" in text, text
            ports[s] = (port, 9100 + port - 50050)
        else:
            assert ports[s][0] == port, (s, ports[s], port)
    return ports


# ------------------------------------------------------------------------------------------------
# the artefacts


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@functools.lru_cache(maxsize=None)
def rendered(overlay: str) -> list[dict]:
    path = OUT / f"k8s-{overlay}.yaml"
    if not path.is_file():
        raise AssertionError(f"{path} is missing: run deploy/check (it renders the overlays)")
    return load_yaml_docs(path)


@functools.lru_cache(maxsize=None)
def compose() -> dict:
    path = OUT / "compose.yaml"
    if not path.is_file():
        raise AssertionError(f"{path} is missing: run deploy/check (it runs docker-compose config)")
    return yaml.safe_load(path.read_text())


def objects(overlay: str, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in rendered(overlay) if d["kind"] == kind}


def configmaps(overlay: str) -> dict[str, dict]:
    return {n: d.get("data", {}) for n, d in objects(overlay, "ConfigMap").items()}


def container_env(overlay: str, container: dict) -> dict[str, str]:
    """The environment a container gets: envFrom ConfigMaps, then env (which wins)."""
    env: dict[str, str] = {}
    cms = configmaps(overlay)
    for src in container.get("envFrom", []):
        name = src["configMapRef"]["name"]
        assert name in cms, f"envFrom names a ConfigMap that is not rendered: {name}"
        env.update(cms[name])
    for e in container.get("env", []):
        env[e["name"]] = e["value"]
    return env


def pod_spec(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]


def main_container(dep: dict) -> dict:
    name = dep["metadata"]["name"]
    (c,) = [c for c in pod_spec(dep)["containers"] if c["name"] == name]
    return c


def image_tag(image: str) -> str | None:
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def dockerfile_stages() -> dict[str, dict]:
    """Stages of deploy/docker/Dockerfile: name -> {"from": image, "lines": [instructions]}."""
    stages: dict[str, dict] = {}
    current = None
    text = (DEPLOY / "docker/Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)$", line, re.I)
        if m:
            current = m.group(2)
            stages[current] = {"from": m.group(1), "lines": []}
        elif current:
            stages[current]["lines"].append(line)
    return stages


def stage_chain(stages: dict, name: str) -> list[str]:
    chain = [name]
    while stages[chain[-1]]["from"] in stages:
        chain.append(stages[chain[-1]]["from"])
    return chain


def stage_env(stages: dict, name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for st in reversed(stage_chain(stages, name)):
        for line in stages[st]["lines"]:
            if line.upper().startswith("ENV "):
                env.update(dict(re.findall(r"(\w+)=(\S+)", line[4:])))
    return env


def stage_instr(stages: dict, name: str, instr: str) -> list[str]:
    return [l[len(instr) + 1 :].strip() for l in stages[name]["lines"] if l.upper().startswith(instr + " ")]


# ------------------------------------------------------------------------------------------------


class Binaries(unittest.TestCase):
    def test_ports_in_manifests_are_the_binaries_defaults(self):
        ports = binary_ports()
        self.assertEqual(set(ports), set(SERVICES))
        for overlay in OVERLAYS:
            deps = objects(overlay, "Deployment")
            for s in SERVICES:
                c = main_container(deps[s])
                named = {p["name"]: p["containerPort"] for p in c["ports"]}
                api_name = "http" if s == "gateway" else "grpc"
                self.assertEqual((named[api_name], named["admin"]), ports[s], f"{overlay} {s} container ports")
                env = container_env(overlay, c)
                api_env, admin_env = ADDR_ENV[s]
                self.assertEqual(env[api_env], f"0.0.0.0:{ports[s][0]}", f"{overlay} {s} {api_env}")
                self.assertEqual(env[admin_env], f"0.0.0.0:{ports[s][1]}", f"{overlay} {s} {admin_env}")
        services = compose()["services"]
        for s in SERVICES:
            env = services[s]["environment"]
            api_env, admin_env = ADDR_ENV[s]
            self.assertEqual(env[api_env], f"0.0.0.0:{ports[s][0]}", f"compose {s}")
            self.assertEqual(env[admin_env], f"0.0.0.0:{ports[s][1]}", f"compose {s}")
        stages = dockerfile_stages()
        for target, s in dockerfile_service_targets().items():
            env = stage_env(stages, target)
            api_env, admin_env = ADDR_ENV[s]
            self.assertEqual(env[api_env], f"0.0.0.0:{ports[s][0]}", f"Dockerfile {target}")
            self.assertEqual(env[admin_env], f"0.0.0.0:{ports[s][1]}", f"Dockerfile {target}")
            exposed = {int(p) for l in stage_instr(stages, target, "EXPOSE") for p in l.split()}
            self.assertEqual(exposed, set(ports[s]), f"Dockerfile {target} EXPOSE")

    def test_k8s_args_and_env_are_accepted_by_the_binaries(self):
        for overlay in OVERLAYS:
            for s, dep in objects(overlay, "Deployment").items():
                h = help_of(s)
                c = main_container(dep)
                self.check_invocation(h, c.get("command", []) + c.get("args", []), container_env(overlay, c), f"{overlay} {s}")

    def test_compose_commands_and_env_are_accepted_by_the_binaries(self):
        for s, svc in compose()["services"].items():
            h = help_of(s)
            self.check_invocation(h, svc.get("command", []), svc.get("environment", {}), f"compose {s}")

    def test_dockerfile_env_is_accepted_by_the_binaries(self):
        stages = dockerfile_stages()
        for target, s in dockerfile_service_targets().items():
            h = help_of(s)
            cmd = re.findall(r'"([^"]+)"', stage_instr(stages, target, "CMD")[0])
            self.check_invocation(h, cmd, stage_env(stages, target), f"Dockerfile {target}")

    def check_invocation(self, h: Help, args: list[str], env: dict[str, str], where: str):
        self.assertTrue(args and args[0] == "serve", f"{where}: runs `serve` explicitly, not {args}")
        self.assertIn("serve", h.subcommands(), f"{where}: {h.service} has no serve subcommand")
        for a in args[1:]:
            if a.startswith("--"):
                self.assertTrue(a.split("=", 1)[0] in h.flags, f"{where}: {h.service} serve does not accept {a}")
        for name, value in env.items():
            if name in FOREIGN_ENV:
                continue
            self.assertTrue(h.reads_env(name), f"{where}: {h.service} reads no variable {name}")
            info = h.env.get(name)
            if info and info["values"]:
                self.assertIn(str(value), info["values"], f"{where}: {name}={value} is not one of {info['values']}")
        # the addresses must be reachable from other containers / pods
        for e in ADDR_ENV[h.service]:
            if e in env:
                self.assertTrue(str(env[e]).startswith("0.0.0.0:"), f"{where}: {e}={env[e]} must bind 0.0.0.0")

    def test_gateway_upstream_urls_name_the_services_and_their_ports(self):
        ports = binary_ports()
        for overlay in OVERLAYS:
            svcs = objects(overlay, "Service")
            deps = objects(overlay, "Deployment")
            env = container_env(overlay, main_container(deps["gateway"]))
            for var, s in GATEWAY_URL_ENV.items():
                u = urlparse(env[var])
                self.assertEqual((u.scheme, u.hostname, u.port), ("http", HEADLESS[s], ports[s][0]), f"{overlay} {var}")
                for name in (s, HEADLESS[s]):
                    grpc = {p["name"]: p["port"] for p in svcs[name]["spec"]["ports"]}["grpc"]
                    self.assertEqual(grpc, ports[s][0], f"{overlay} Service {name} grpc port")
                # a headless Service maps no port: the gateway dials <pod IP>:<URL port>
                container_ports = {p["name"]: p["containerPort"] for p in main_container(deps[s])["ports"]}
                self.assertEqual(container_ports["grpc"], u.port, f"{overlay} {var}: the container's grpc port")
        env = compose()["services"]["gateway"]["environment"]
        for var, s in GATEWAY_URL_ENV.items():
            u = urlparse(env[var])
            self.assertEqual((u.scheme, u.hostname, u.port), ("http", s, ports[s][0]), f"compose {var}")

    def test_gateway_balances_over_ready_pods_in_kubernetes_and_not_in_compose(self):
        for overlay in OVERLAYS:
            svcs = objects(overlay, "Service")
            deps = objects(overlay, "Deployment")
            env = container_env(overlay, main_container(deps["gateway"]))
            self.assertEqual(env.get("CT_UPSTREAM_DISCOVERY"), "dns", f"{overlay}: the gateway resolves its upstreams")
            for var, s in GATEWAY_URL_ENV.items():
                # every upstream the gateway dials is a headless Service of that upstream's ready pods
                host = urlparse(env[var]).hostname
                self.assertIn(host, svcs, f"{overlay} {var}: no Service {host}")
                spec = svcs[host]["spec"]
                self.assertEqual(spec.get("clusterIP"), "None", f"{overlay} Service {host} is headless")
                self.assertIsNot(spec.get("publishNotReadyAddresses"), True, f"{overlay} Service {host}: ready pods only")
                self.assertEqual(spec["selector"], svcs[s]["spec"]["selector"], f"{overlay} Service {host}: the pods of {s}")
                self.assertLessEqual(spec["selector"].items(), deps[s]["spec"]["template"]["metadata"]["labels"].items(), f"{overlay} {host}")
        env = compose()["services"]["gateway"]["environment"]
        self.assertEqual(env.get("CT_UPSTREAM_DISCOVERY", "static"), "static", "compose: one replica per service, one connection each")
        self.assertEqual(help_of("gateway").env["CT_UPSTREAM_DISCOVERY"]["default"], "static")

    def test_env_files_document_every_departure_from_the_binary_defaults(self):
        files = {
            "preprocess.env": ["preprocess-svc"],
            "models.env": MODEL_SERVICES,
            "ensemble.env": ["ensemble-svc"],
            "gateway.env": ["gateway"],
            "common.env": SERVICES,
        }
        dirs = [DEPLOY / "compose/env", DEPLOY / "k8s/base/config"]
        for d in dirs:
            self.assertEqual({p.name for p in d.glob("*.env")}, set(files), d)
        overlay_files = [DEPLOY / f"k8s/overlays/{o}/models.env" for o in ("cpu", "gpu")]
        for path in [d / f for d in dirs for f in files] + overlay_files:
            for lineno, key, value, comment in env_file_entries(path):
                where = f"{path.relative_to(ROOT)}:{lineno}"
                self.assertRegex(key, r"^CT_\w+$", where)
                self.assertTrue(comment.strip(), f"{where}: {key} has no comment")
                for s in files[path.name]:
                    h = help_of(s)
                    self.assertTrue(h.reads_env(key), f"{where}: {s} reads no variable {key}")
                    info = h.env.get(key)
                    if info and info["values"]:
                        self.assertIn(value, info["values"], f"{where}: {key}={value}")
                    # the base files hold the binaries' defaults unless a comment says otherwise;
                    # the overlays' files exist to depart from them (and say why)
                    if info and info["default"] is not None and info["default"] != value and path not in overlay_files:
                        self.assertIn("binary default", comment, f"{where}: {key}={value} differs from the binary default {info['default']} without saying so")


def env_file_entries(path: Path):
    """(line number, key, value, the comment block above its group of KEY=VALUE lines)."""
    comment, in_values = "", False
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            comment, in_values = "", False
        elif line.startswith("#"):
            if in_values:
                comment, in_values = "", False
            comment += line + "\n"
        else:
            in_values = True
            key, _, value = line.partition("=")
            yield i, key, value, comment


def dockerfile_service_targets() -> dict[str, str]:
    """Dockerfile target -> service binary."""
    targets = {"preprocess-svc": "preprocess-svc", "ensemble-svc": "ensemble-svc", "gateway": "gateway"}
    for s in MODEL_SERVICES:
        targets[f"{s}-cpu"] = s
        targets[f"{s}-gpu"] = s
    return targets


class Kubernetes(unittest.TestCase):
    def test_every_service_has_deployment_service_pdb(self):
        for overlay in OVERLAYS:
            deps, svcs, pdbs = (objects(overlay, k) for k in ("Deployment", "Service", "PodDisruptionBudget"))
            self.assertEqual(set(deps), set(SERVICES), overlay)
            self.assertEqual(set(svcs), set(SERVICES) | set(HEADLESS.values()), overlay)
            for s in SERVICES:
                labels = deps[s]["spec"]["template"]["metadata"]["labels"]
                sel = deps[s]["spec"]["selector"]["matchLabels"]
                self.assertLessEqual(sel.items(), labels.items(), f"{overlay} {s} selector")
                port_names = {p["name"] for p in main_container(deps[s])["ports"]}
                for name in [s] + ([HEADLESS[s]] if s in HEADLESS else []):
                    self.assertLessEqual(svcs[name]["spec"]["selector"].items(), labels.items(), f"{overlay} Service {name}")
                    for p in svcs[name]["spec"]["ports"]:
                        self.assertIn(p["targetPort"], port_names, f"{overlay} Service {name} targetPort")
                covering = [p for p in pdbs.values() if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
                self.assertEqual(len(covering), 1, f"{overlay} {s}: exactly one PodDisruptionBudget")

    def test_probes_resources_and_security_of_every_container(self):
        for overlay in OVERLAYS:
            for s, dep in objects(overlay, "Deployment").items():
                spec = pod_spec(dep)
                self.assertIs(spec["securityContext"].get("runAsNonRoot"), True, f"{overlay} {s}")
                self.assertNotEqual(spec["securityContext"].get("runAsUser"), 0, f"{overlay} {s}")
                for c in spec["containers"]:
                    where = f"{overlay} {s}/{c['name']}"
                    admin = {p["name"]: p["containerPort"] for p in c["ports"]}["admin"]
                    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
                        get = c[probe]["httpGet"]
                        self.assertEqual(get["path"], path, f"{where} {probe}")
                        self.assertIn(get["port"], ("admin", admin), f"{where} {probe} port")
                    if "startupProbe" in c:
                        self.assertIn(c["startupProbe"]["httpGet"]["port"], ("admin", admin), where)
                for c in spec["containers"] + spec.get("initContainers", []):
                    where = f"{overlay} {s}/{c['name']}"
                    res = c.get("resources", {})
                    self.assertIn("cpu", res.get("requests", {}), f"{where} cpu request")
                    self.assertIn("memory", res.get("requests", {}), f"{where} memory request")
                    self.assertIn("memory", res.get("limits", {}), f"{where} memory limit")
                    sc = c["securityContext"]
                    self.assertIs(sc["allowPrivilegeEscalation"], False, where)
                    self.assertIs(sc["readOnlyRootFilesystem"], True, where)
                    self.assertEqual(sc["capabilities"]["drop"], ["ALL"], where)

    def test_model_services_have_an_hpa(self):
        for overlay in OVERLAYS:
            hpas = objects(overlay, "HorizontalPodAutoscaler")
            for s in MODEL_SERVICES:
                targeting = [h for h in hpas.values() if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": s}]
                self.assertEqual(len(targeting), 1, f"{overlay}: one HPA for {s}")
                spec = targeting[0]["spec"]
                self.assertLessEqual(spec["minReplicas"], spec["maxReplicas"])
                self.assertTrue(spec["metrics"], f"{overlay} {s} HPA metrics")

    def test_gpu_overlays_request_a_gpu_for_every_model_and_only_for_them(self):
        for overlay in GPU_OVERLAYS:
            for s, dep in objects(overlay, "Deployment").items():
                spec = pod_spec(dep)
                c = main_container(dep)
                limits, requests = c["resources"].get("limits", {}), c["resources"].get("requests", {})
                if s in MODEL_SERVICES:
                    self.assertGreaterEqual(int(limits.get(GPU, 0)), 1, f"{overlay} {s} {GPU} limit")
                    self.assertEqual(requests.get(GPU, limits[GPU]), limits[GPU], f"{overlay} {s}")
                    self.assertTrue(spec.get("nodeSelector"), f"{overlay} {s} node selector")
                    self.assertTrue(any(t.get("key") == GPU for t in spec.get("tolerations", [])), f"{overlay} {s} toleration")
                    self.assertTrue(c["image"].endswith("-gpu"), f"{overlay} {s} image {c['image']}")
                    self.assertEqual(container_env(overlay, c)["CT_PROVIDER"], "cuda", f"{overlay} {s}")
                else:
                    self.assertNotIn(GPU, limits, f"{overlay} {s} needs no GPU")
            self.assertIn("ct-model-bundles", objects(overlay, "PersistentVolumeClaim"), overlay)

    def test_cpu_overlay_has_no_gpu_and_uses_the_demo_bundles(self):
        text = (OUT / "k8s-cpu.yaml").read_text()
        self.assertNotIn(GPU, text)
        self.assertEqual(objects("cpu", "PersistentVolumeClaim"), {})
        for s, dep in objects("cpu", "Deployment").items():
            c = main_container(dep)
            if s in MODEL_SERVICES:
                self.assertTrue(c["image"].endswith("-cpu"), c["image"])
                self.assertEqual(container_env("cpu", c)["CT_PROVIDER"], "cpu")
            if s in BUNDLES:
                (init,) = pod_spec(dep)["initContainers"]
                self.assertRegex(init["image"], r"/demo-models:")
                vol = next(v for v in pod_spec(dep)["volumes"] if v["name"] == "models")
                self.assertIn("emptyDir", vol)

    def test_model_bundles_are_mounted_read_only(self):
        for overlay in OVERLAYS:
            for s, dep in objects(overlay, "Deployment").items():
                c = main_container(dep)
                mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
                if s in BUNDLES:
                    self.assertIs(mounts["/models"].get("readOnly"), True, f"{overlay} {s}")
                    self.assertEqual(container_env(overlay, c)[BUNDLE_ENV[s]], f"/models/{BUNDLES[s]}")
                    vol = next(v for v in pod_spec(dep)["volumes"] if v["name"] == mounts["/models"]["name"])
                    if "persistentVolumeClaim" in vol:
                        self.assertIs(vol["persistentVolumeClaim"].get("readOnly"), True, f"{overlay} {s}")
                else:
                    self.assertNotIn("/models", mounts, f"{overlay} {s} loads no bundle")

    def test_custom_metrics_variant_uses_metrics_the_services_export(self):
        source = (ROOT / "crates/model-server/src/metrics.rs").read_text()
        for s in MODEL_SERVICES:
            hpa = objects("gpu-custom-metrics", "HorizontalPodAutoscaler")[s]
            names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
            self.assertTrue(names, s)
            for n in names:
                self.assertIn(f'"{n}"', source, f"{n} is not a metric of crates/model-server")
                self.assertTrue(help_of(s).contains(n), f"{n} is not in the {s} binary")
        for overlay in ("cpu", "gpu"):
            for s in MODEL_SERVICES:
                kinds = {m["type"] for m in objects(overlay, "HorizontalPodAutoscaler")[s]["spec"]["metrics"]}
                self.assertEqual(kinds, {"Resource"}, f"{overlay} {s}: CPU autoscaling by default")

    def test_only_the_gateway_reaches_the_internal_grpc_ports(self):
        for overlay in OVERLAYS:
            policies = objects(overlay, "NetworkPolicy").values()
            deps = objects(overlay, "Deployment")
            gateway_labels = deps["gateway"]["spec"]["template"]["metadata"]["labels"]
            default_deny = [p for p in policies if p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"] and not p["spec"].get("ingress")]
            self.assertTrue(default_deny, f"{overlay}: a default-deny ingress policy")
            for s, dep in deps.items():
                labels = dep["spec"]["template"]["metadata"]["labels"]
                ports = {p["name"]: p["containerPort"] for p in main_container(dep)["ports"]}
                api = "http" if s == "gateway" else "grpc"
                allowed_from = []
                for p in policies:
                    if not selects(p["spec"]["podSelector"], labels) or "Ingress" not in p["spec"]["policyTypes"]:
                        continue
                    for rule in p["spec"].get("ingress", []):
                        rule_ports = rule.get("ports")
                        if rule_ports is None or any(rp.get("port") in (api, ports[api]) for rp in rule_ports):
                            allowed_from.append(rule.get("from"))
                self.assertTrue(allowed_from, f"{overlay} {s}: its {api} port is reachable by someone")
                if s == "gateway":
                    continue
                for peers in allowed_from:
                    self.assertTrue(peers, f"{overlay} {s}: {api} port open to every source")
                    for peer in peers:
                        self.assertEqual(set(peer), {"podSelector"}, f"{overlay} {s}: {api} port open to {peer}")
                        self.assertTrue(selects(peer["podSelector"], gateway_labels), f"{overlay} {s}: peer {peer}")
                        for other, d in deps.items():
                            if other != "gateway":
                                self.assertFalse(selects(peer["podSelector"], d["spec"]["template"]["metadata"]["labels"]), f"{overlay}: {other} may reach {s}")


def selects(selector: dict, labels: dict) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        op, key, values = e["operator"], e["key"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


class Compose(unittest.TestCase):
    def test_services_gpu_reservations_volumes_health_and_logs(self):
        services = compose()["services"]
        self.assertEqual(set(services), set(SERVICES))
        targets = set(dockerfile_stages())
        for s, svc in services.items():
            self.assertIn(svc["restart"], ("unless-stopped", "always"), s)
            self.assertEqual(svc["logging"]["driver"], "json-file", s)
            self.assertIn("max-size", svc["logging"]["options"], s)
            self.assertIn("max-file", svc["logging"]["options"], s)
            self.assertEqual(svc["healthcheck"]["test"], ["CMD", "/usr/local/bin/ct-healthcheck"], s)
            self.assertIn(svc["build"]["target"], targets, s)
            self.assertTrue(svc["build"]["target"].startswith(s), s)
            devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
            if s in MODEL_SERVICES:
                self.assertEqual(svc["build"]["target"], f"{s}-gpu")
                self.assertTrue(svc["image"].endswith("-gpu"), svc["image"])
                self.assertTrue(any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), s)
            else:
                self.assertEqual(devices, [], s)
            mounts = {v["target"]: v for v in svc.get("volumes", [])}
            if s in BUNDLES:
                self.assertIs(mounts["/models"]["read_only"], True, s)
                self.assertEqual(svc["environment"][BUNDLE_ENV[s]], f"/models/{BUNDLES[s]}")
            else:
                self.assertNotIn("/models", mounts, s)
            if s != "gateway":
                self.assertNotIn("ports", svc, f"{s}: internal services publish no port")
        sources = {v["source"] for s in BUNDLES for v in services[s]["volumes"] if v["target"] == "/models"}
        self.assertEqual(len(sources), 1, "one shared model directory")
        # one-machine mode: the gateway and every model service share one tmpfs volume at /shared
        for s in ["gateway", *MODEL_SERVICES]:
            mounts = {v["target"]: v for v in services[s].get("volumes", [])}
            self.assertEqual(mounts.get("/shared", {}).get("source"), "shared-volumes", s)
        self.assertEqual(compose()["volumes"]["shared-volumes"]["driver_opts"]["type"], "tmpfs")
        gw = services["gateway"]
        self.assertEqual({k: v["condition"] for k, v in gw["depends_on"].items()}, {s: "service_healthy" for s in SERVICES if s != "gateway"})
        # the REST API on host port 8000 (docker-compose prints a published port as a mapping)
        self.assertIn({"published": 8000, "target": 8000}, gw["ports"])


class Images(unittest.TestCase):
    def test_image_tags_are_pinned(self):
        images = set()
        for overlay in OVERLAYS:
            for dep in objects(overlay, "Deployment").values():
                spec = pod_spec(dep)
                images |= {c["image"] for c in spec["containers"] + spec.get("initContainers", [])}
        images |= {svc["image"] for svc in compose()["services"].values()}
        stages = dockerfile_stages()
        images |= {st["from"] for st in stages.values() if st["from"] not in stages}
        self.assertTrue(images)
        for image in images:
            tag = image_tag(image)
            self.assertTrue(tag or "@sha256:" in image, f"{image}: no tag")
            self.assertNotIn(tag, ("latest", "stable", "lts"), f"{image}: moving tag")
            if tag:
                self.assertRegex(tag, r"\d", f"{image}: tag names no version")

    def test_dockerfile_targets(self):
        stages = dockerfile_stages()
        cuda_base = stages["runtime-model-gpu"]["from"]
        self.assertRegex(cuda_base, r"^nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-")
        setup = (ROOT / "scripts/setup").read_text()
        ort_cpu = re.search(r"^ORT_VERSION=(\S+)", setup, re.M).group(1)
        pins = {
            "cpu": re.search(r"^onnxruntime==(\S+) --hash=sha256:[0-9a-f]{64}$", (DEPLOY / "docker/requirements/ort-cpu.txt").read_text(), re.M).group(1),
            "gpu": re.search(r"^onnxruntime-gpu==(\S+) --hash=sha256:[0-9a-f]{64}$", (DEPLOY / "docker/requirements/ort-gpu.txt").read_text(), re.M).group(1),
        }
        self.assertEqual(pins["cpu"], ort_cpu, "the CPU images use the ONNX Runtime of scripts/setup")
        self.assertEqual(pins["gpu"], "1.31.1")
        for target, s in dockerfile_service_targets().items():
            self.assertIn(target, stages)
            chain = stage_chain(stages, target)
            env = stage_env(stages, target)
            self.assertEqual(stage_instr(stages, target, "USER"), ["10001:10001"], target)
            self.assertEqual(stage_instr(stages, target, "ENTRYPOINT"), [f'["/usr/local/bin/{s}"]'], target)
            self.assertEqual(stage_instr(stages, target, "CMD"), ['["serve"]'], target)
            (hc,) = stage_instr(stages, target, "HEALTHCHECK")
            self.assertIn('CMD ["/usr/local/bin/ct-healthcheck"]', hc, target)
            copies = [l for st in chain for l in stages[st]["lines"] if l.upper().startswith("COPY")]
            self.assertTrue(any(f"--from=build /out/{s} " in l for l in copies), f"{target}: binary from the build stage")
            for l in copies:
                self.assertNotRegex(l, r"\bmodels\b", f"{target}: models are mounted, never baked in")
            runs = [l for st in chain for l in stages[st]["lines"] if l.upper().startswith("RUN")]
            for l in runs:
                self.assertNotRegex(l, r"apt-get|cargo|gcc|clang|pip|make\b", f"{target}: no build tools in a runtime image")
            if s in BUNDLES:
                self.assertEqual(env[BUNDLE_ENV[s]], f"/models/{BUNDLES[s]}")
            if s in MODEL_SERVICES:
                flavour = target.rsplit("-", 1)[1]
                self.assertIn(f"runtime-model-{flavour}", chain)
                version = pins[flavour]
                self.assertEqual(env["ORT_DYLIB_PATH"], f"/opt/onnxruntime/lib/libonnxruntime.so.{version}")
                self.assertEqual(env["CT_PROVIDER"], "cuda" if flavour == "gpu" else "cpu")
            else:
                self.assertNotIn("ORT_DYLIB_PATH", env, f"{target} loads no ONNX Runtime")
        build = " ".join(stages["build"]["lines"])
        for s in SERVICES:
            self.assertIn(f"-p {s} ", build)
            if s in MODEL_SERVICES:
                self.assertIn(f"{s}/cuda", build)
                self.assertRegex((ROOT / s / "Cargo.toml").read_text(), r'(?m)^cuda = \["model-server/cuda"\]', s)
        self.assertRegex((ROOT / "crates/model-server/Cargo.toml").read_text(), r'(?m)^cuda = \["ort/cuda"\]')


SECRET_PATTERNS = [
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{30,}",
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    r"\beyJ[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}\.",  # a JWT
]
SECRET_KEYS = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_KEY|CREDENTIAL)", re.I)
# Kubernetes fields whose names match SECRET_KEYS but hold no secret
NOT_SECRET_KEYS = {"automountServiceAccountToken"}


class Secrets(unittest.TestCase):
    def test_no_secret_is_committed(self):
        for overlay in OVERLAYS:
            self.assertNotIn("Secret", {d["kind"] for d in rendered(overlay)}, overlay)
            for name, data in configmaps(overlay).items():
                for k in data:
                    self.assertFalse(SECRET_KEYS.search(k), f"{overlay} ConfigMap {name}: {k}")
        for s, svc in compose()["services"].items():
            for k in svc.get("environment", {}):
                self.assertFalse(SECRET_KEYS.search(k), f"compose {s}: {k}")
        tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "deploy"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        self.assertTrue(tracked)
        for rel in tracked:
            path = ROOT / rel
            if not path.is_file():
                continue
            text = path.read_text(errors="replace")
            for pat in SECRET_PATTERNS:
                self.assertIsNone(re.search(pat, text), f"{rel}: looks like a secret ({pat})")
            if path.parent == DEPLOY / "tests" or path.suffix == ".md":
                continue
            # variables named like credentials, and YAML keys named like them (password:, apiKey: ...)
            m = re.search(r"\b[A-Z][A-Z0-9_]*(?:PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_KEY|CREDENTIAL)S?\b", text)
            self.assertIsNone(m, f"{rel}: {m and m.group(0)}")
            if path.suffix in (".yml", ".yaml"):
                for k in re.findall(r"^\s*-?\s*([A-Za-z_][\w.-]*)\s*:", text, re.M):
                    self.assertFalse(SECRET_KEYS.search(k) and k not in NOT_SECRET_KEYS, f"{rel}: key {k}")


if __name__ == "__main__":
    unittest.main()
