"""The deployment files (issue #9) checked without a Docker engine or a cluster:

- docker-compose.yml: `docker-compose config` (Debian's docker-compose 1.29, no engine needed);
- Kubernetes: every overlay renders with kustomize (and `kubectl kustomize` where kubectl exists), every
  rendered object validates against the Kubernetes 1.32 API schema (kubernetes-validate's schemas,
  installed once, nothing downloaded while testing), plus the hardening the issue asks for;
- every variable a service's settings class requires is set in Compose and Kubernetes, and nothing
  sets a CLASSFORGE_ variable no settings class reads (typo guard);
- promtool check config / check rules / test rules; the Grafana dashboard's queries;
- the Dockerfiles install from requirements.lock, pinned by digest, non-root.

Tools come from deploy/tools/install.sh (idempotent, cached under $CLASSFORGE_CACHE). A test skips only
when its tool cannot be installed on this machine, and says so in the skip reason.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from services.common.settings import DEFAULT_PORTS, REQUIRED, ServiceSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S = DEPLOY / "k8s"
OVERLAYS = ["dev", "gpu", "operators"]
KUBERNETES_VERSION = "1.32.0"
# Custom resources of the operators overlay: their CRDs (Strimzi, MinIO operator) are not shipped, so
# only their shape is checked here.
CUSTOM_KINDS = {("kafka.strimzi.io/v1beta2", "Kafka"), ("kafka.strimzi.io/v1beta2", "KafkaNodePool"),
                ("kafka.strimzi.io/v1beta2", "KafkaTopic"), ("minio.min.io/v2", "Tenant")}
# The classforge services that run in containers (the model-server stand-in is replaced by TF Serving).
SERVICES = ["jobs", "ingest", "tfrecords", "trainer", "evaluator", "inference"]


# --------------------------------------------------------------------------- settings classes

def _settings_class(service: str) -> type[ServiceSettings]:
    """The most derived ServiceSettings subclass a service defines (every service keeps it in
    services/<s>/settings.py)."""
    module_name = f"services.{service}.settings"
    module = importlib.import_module(module_name)
    found = [v for v in vars(module).values()
             if isinstance(v, type) and issubclass(v, ServiceSettings) and v.__module__ == module_name]
    assert found, f"{module_name} defines no ServiceSettings subclass"
    found.sort(key=lambda cls: len(cls.__mro__), reverse=True)
    return found[0]


@functools.cache
def settings_vars() -> dict[str, tuple[set[str], set[str]]]:
    """service -> (every variable its settings read, the required ones), from Settings.describe()."""
    result = {}
    for service in SERVICES:
        rows = _settings_class(service).describe()
        result[service] = ({r[0] for r in rows}, {r[0] for r in rows if r[1] == "(required)"})
    return result


def all_settings_vars() -> set[str]:
    names = set().union(*(v[0] for v in settings_vars().values()))
    from services.model_server.settings import ModelServerSettings
    return names | {r[0] for r in ModelServerSettings.describe()}


def test_settings_classes_are_found():
    for service in SERVICES:
        read, required = settings_vars()[service]
        assert {"CLASSFORGE_KAFKA_BOOTSTRAP", "CLASSFORGE_S3_ENDPOINT"} <= required, service
    assert "CLASSFORGE_MODEL_BASE_PATH" in settings_vars()["inference"][1]
    assert REQUIRED is not None and issubclass(ServiceSettings, Settings)


def _check_env(where: str, service: str, env: set[str]) -> list[str]:
    read, required = settings_vars()[service]
    problems = [f"{where}: {service} does not set required {name}" for name in sorted(required - env)]
    problems += [f"{where}: {service} sets {name}, which its settings never read"
                 for name in sorted(n for n in env - read if n.startswith("CLASSFORGE_"))]
    return problems


# --------------------------------------------------------------------------- tools

@functools.cache
def tools() -> dict[str, str]:
    """Runs deploy/tools/install.sh (a no-op once cached) and returns the paths it reports."""
    install = subprocess.run(["bash", str(DEPLOY / "tools" / "install.sh"), "all"], capture_output=True, text=True,
                             timeout=900)
    env = subprocess.run(["bash", str(DEPLOY / "tools" / "install.sh"), "env"], capture_output=True, text=True,
                         check=True).stdout
    found = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    found["_install_log"] = install.stderr
    return found


def tool(name: str) -> str:
    path = tools().get(name)
    if not path:
        pytest.skip(f"!!! {name} could not be installed by deploy/tools/install.sh on this machine; the check "
                    f"did NOT run. Installer said:\n{tools()['_install_log']}")
    return path


# --------------------------------------------------------------------------- Compose

@functools.cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _compose_service_name(spec: dict) -> str | None:
    command = spec.get("command") or []
    return command[0] if command and command[0] in SERVICES else None


def test_compose_config_validates():
    docker_compose = tool("DOCKER_COMPOSE")
    for profile in ([], ["--profile", "gpu"]):
        result = subprocess.run([docker_compose, "-f", str(COMPOSE_FILE), *profile, "config", "-q"],
                                capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
    services = subprocess.run([docker_compose, "-f", str(COMPOSE_FILE), "--profile", "gpu", "config", "--services"],
                              capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    assert {"kafka", "minio", "minio-init", "tf-serving", "prometheus", "grafana", "kafka-exporter",
            "trainer-gpu", *SERVICES} <= set(services)


def test_compose_runs_every_service_with_health_checks_and_dependencies():
    services = compose()["services"]
    runs = {}
    for name, spec in services.items():
        service = _compose_service_name(spec)
        if service is None:
            continue
        runs.setdefault(service, []).append(name)
        test = spec["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "services.common.healthcheck"] and service in test, name
        deps = spec["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy", name
        assert deps["minio"]["condition"] == "service_healthy", name
        assert deps["minio-init"]["condition"] == "service_completed_successfully", name
        assert spec.get("read_only") is True and spec.get("cap_drop") == ["ALL"], name
    assert set(runs) == set(SERVICES)
    gpu = services["trainer-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "profiles" not in services["trainer"]


def test_compose_sets_every_required_variable_and_nothing_unknown():
    problems = []
    known = all_settings_vars()
    for name, spec in compose()["services"].items():
        env = set((spec.get("environment") or {}).keys())
        problems += [f"compose: {name} sets {v}, which no settings class reads"
                     for v in sorted(env) if v.startswith("CLASSFORGE_") and v not in known]
        service = _compose_service_name(spec)
        if service:
            problems += _check_env("compose", service, env)
    assert not problems, "\n".join(problems)


def test_compose_tf_serving_and_inference_share_the_model_volume():
    services = compose()["services"]
    tfs, inference = services["tf-serving"], services["inference"]
    flags = tfs["command"]
    assert tfs["entrypoint"] == ["tensorflow_model_server"]
    assert not any("model_config_file_poll_wait_seconds" in f for f in flags), "inference pushes the config"
    assert "--model_config_file=/etc/tf-serving/models.config" in flags
    assert "--monitoring_config_file=/etc/tf-serving/monitoring.config" in flags
    assert "--enable_batching=true" in flags and "--batching_parameters_file=/etc/tf-serving/batching.config" in flags
    assert "models:/models:ro" in tfs["volumes"] and "models:/models" in inference["volumes"]
    env = inference["environment"]
    assert env["CLASSFORGE_MODEL_SERVER"] == "tf-serving:8500"
    assert env["CLASSFORGE_MODEL_BASE_PATH"] == "/models"
    assert inference["depends_on"]["tf-serving"]["condition"] == "service_healthy"


def test_tf_serving_config_files_parse():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((DEPLOY / "tf-serving" / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    assert config.WhichOneof("config") == "model_config_list" and not config.model_config_list.config
    # MonitoringConfig and BatchingParameters are not in tensorflow-serving-api: their fields as in
    # tensorflow_serving/config/monitoring_config.proto and session_bundle_config.proto.
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto(
        name="google/protobuf/wrappers.proto", package="google.protobuf", message_type=[
            descriptor_pb2.DescriptorProto(name="Int64Value", field=[descriptor_pb2.FieldDescriptorProto(
                name="value", number=1, type=3, label=1)])]).SerializeToString())
    f = descriptor_pb2.FieldDescriptorProto
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto(
        name="tfs.proto", package="tfs", dependency=["google/protobuf/wrappers.proto"], message_type=[
            descriptor_pb2.DescriptorProto(name="PrometheusConfig", field=[
                f(name="enable", number=1, type=8, label=1), f(name="path", number=2, type=9, label=1)]),
            descriptor_pb2.DescriptorProto(name="MonitoringConfig", field=[
                f(name="prometheus_config", number=1, type=11, label=1, type_name=".tfs.PrometheusConfig")]),
            descriptor_pb2.DescriptorProto(name="BatchingParameters", field=[
                *(f(name=n, number=i, type=11, label=1, type_name=".google.protobuf.Int64Value")
                  for i, n in enumerate(["max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                                         "num_batch_threads"], start=1)),
                f(name="pad_variable_length_inputs", number=7, type=8, label=1)])]).SerializeToString())
    message = functools.partial(message_factory.GetMessageClass)
    monitoring = text_format.Parse((DEPLOY / "tf-serving" / "monitoring.config").read_text(),
                                   message(pool.FindMessageTypeByName("tfs.MonitoringConfig"))())
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"
    batching = text_format.Parse((DEPLOY / "tf-serving" / "batching.config").read_text(),
                                 message(pool.FindMessageTypeByName("tfs.BatchingParameters"))())
    assert batching.max_batch_size.value > 0 and batching.batch_timeout_micros.value > 0
    for name in ("models.config", "monitoring.config", "batching.config"):
        assert (K8S / "base" / "tf-serving" / name).read_text() == (DEPLOY / "tf-serving" / name).read_text(), \
            f"deploy/k8s/base/tf-serving/{name} must be a copy of deploy/tf-serving/{name}"


# --------------------------------------------------------------------------- Kubernetes

@functools.cache
def rendered(overlay: str) -> list[dict]:
    result = subprocess.run([tool("KUSTOMIZE"), "build", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kustomize build {overlay}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_with_kubectl_kustomize(overlay):
    kubectl = tools().get("KUBECTL")
    if not kubectl:
        pytest.skip("kubectl is not installed; the kustomize binary from deploy/tools/install.sh renders every "
                    "overlay in the other tests")
    result = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(result.stdout) if d} == \
        {(d["kind"], d["metadata"]["name"]) for d in rendered(overlay)}


_VALIDATE = """
import json, sys, kubernetes_validate
failures = []
for overlay, doc in json.load(sys.stdin):
    try:
        kubernetes_validate.validate(doc, sys.argv[1], strict=True)
    except Exception as exc:
        failures.append(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {str(exc)[:600]}")
print(json.dumps(failures))
"""


def test_rendered_objects_validate_against_the_kubernetes_schema():
    python = tool("VALIDATE_PYTHON")
    docs, custom = [], []
    for overlay in OVERLAYS:
        for doc in rendered(overlay):
            key = (doc["apiVersion"], doc["kind"])
            (custom if key in CUSTOM_KINDS else docs).append((overlay, doc))
    result = subprocess.run([python, "-c", _VALIDATE, KUBERNETES_VERSION], input=json.dumps(docs),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    failures = json.loads(result.stdout)
    assert not failures, "\n".join(failures)
    assert len(docs) > 60
    # custom resources: only the operators overlay has them, each with a spec
    assert {o for o, _ in custom} == {"operators"}
    assert all(doc.get("spec") for _, doc in custom)


def _by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _container_env(doc: dict, docs: list[dict]) -> set[str]:
    container = doc["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"] for e in container.get("env", [])}
    config_maps, secrets = _by_kind(docs, "ConfigMap"), _by_kind(docs, "Secret")
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= set(config_maps[source["configMapRef"]["name"]].get("data", {}))
        if "secretRef" in source:
            secret = secrets[source["secretRef"]["name"]]
            env |= set(secret.get("data", {})) | set(secret.get("stringData", {}))
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_sets_every_required_variable_and_nothing_unknown(overlay):
    docs = rendered(overlay)
    deployments = _by_kind(docs, "Deployment")
    assert set(SERVICES) | {"tf-serving"} == set(deployments)
    problems = []
    known = all_settings_vars()
    for name, doc in deployments.items():
        env = _container_env(doc, docs)
        problems += [f"k8s/{overlay}: {name} sets {v}, which no settings class reads"
                     for v in sorted(env) if v.startswith("CLASSFORGE_") and v not in known]
        if name in SERVICES:
            assert doc["spec"]["template"]["spec"]["containers"][0]["args"] == [name]
            problems += _check_env(f"k8s/{overlay}", name, env)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_hardening_probes_and_ports(overlay):
    docs = rendered(overlay)
    services = _by_kind(docs, "Service")
    pdbs = _by_kind(docs, "PodDisruptionBudget")
    for name, doc in _by_kind(docs, "Deployment").items():
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp must be an emptyDir"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert "grpc" in ports and "metrics" in ports, name
        if name in SERVICES:
            grpc_port, metrics_port = DEFAULT_PORTS[name]
            assert (ports["grpc"], ports["metrics"]) == (grpc_port, metrics_port), name
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert container[probe]["grpc"]["port"] == grpc_port, f"{name}: {probe}"
        service_ports = {p["name"] for p in services[name]["spec"]["ports"]}
        assert {"grpc", "metrics"} <= service_ports, name
        if overlay != "dev":
            assert name in pdbs, f"{name} has no PodDisruptionBudget"
    hpa = _by_kind(docs, "HorizontalPodAutoscaler")["inference"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "inference"
    (pvc,) = _by_kind(docs, "PersistentVolumeClaim").values()
    if overlay != "dev":
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("inference", "tf-serving"):
        claims = [v["persistentVolumeClaim"]["claimName"] for v in
                  _by_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]["volumes"]
                  if "persistentVolumeClaim" in v]
        assert claims == [pvc["metadata"]["name"]], name
    tfs = _by_kind(docs, "Deployment")["tf-serving"]["spec"]["template"]["spec"]["containers"][0]
    assert tfs["args"] == compose()["services"]["tf-serving"]["command"], "TF Serving flags differ from Compose"


def test_gpu_overlay_gives_the_trainer_a_gpu():
    trainer = _by_kind(rendered("gpu"), "Deployment")["trainer"]["spec"]["template"]["spec"]
    container = trainer["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].startswith("classforge-gpu:")
    assert trainer["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in trainer["tolerations"])
    cpu_trainer = _by_kind(rendered("dev"), "Deployment")["trainer"]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu_trainer["resources"].get("limits", {})


def test_operators_overlay_points_classforge_at_its_clusters():
    docs = rendered("operators")
    kinds = {d["kind"] for d in docs}
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "Tenant"} <= kinds
    topics = {d["metadata"]["name"] for d in docs if d["kind"] == "KafkaTopic"}
    assert topics == {"classforge.events", "classforge.events.dlq"}
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("classforge-config")]
    assert config["data"]["CLASSFORGE_KAFKA_BOOTSTRAP"].startswith("classforge-kafka-bootstrap:")
    assert all(d["metadata"].get("namespace") == "classforge" for d in docs if d["kind"] != "Namespace")


# --------------------------------------------------------------------------- Prometheus, Grafana

def test_promtool_check_config_and_rules():
    promtool = shutil.which("promtool") or tool("PROMTOOL")
    for args in (["check", "config", "deploy/prometheus/prometheus.yml"],
                 ["check", "rules", "deploy/prometheus/rules/classforge.rules.yml"],
                 ["test", "rules", "deploy/prometheus/rules/tests.yml"]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


def test_prometheus_scrapes_every_service_and_tf_serving():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for service in SERVICES:
        (sd,) = jobs[service]["dns_sd_configs"]
        assert service in sd["names"] and sd["port"] == DEFAULT_PORTS[service][1], service
    assert "trainer-gpu" in jobs["trainer"]["dns_sd_configs"][0]["names"]
    assert jobs["tf-serving"]["metrics_path"] == "/monitoring/prometheus/metrics"
    assert jobs["tf-serving"]["static_configs"][0]["targets"] == ["tf-serving:8501"]
    assert "kafka-exporter" in jobs
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "classforge.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {"ClassforgeServiceDown", "ClassforgeConsumerLagHigh", "ClassforgeTrainingStalled",
            "ClassforgeInferenceLatencyHigh", "ClassforgeDeadLetters"} <= alerts


def test_grafana_dashboard_queries_use_known_series():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "classforge.json").read_text())
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "classforge.rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    metric_sources = "\n".join(p.read_text() for p in (ROOT / "services").rglob("metrics*.py"))
    exprs = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        exprs += [t["expr"] for t in panel["targets"]]
    titles = " ".join(p["title"] for p in dashboard["panels"])
    for topic in ("Stage outputs", "Training loss", "Classify latency", "Consumer lag"):
        assert topic in titles
    for expr in exprs:
        for name in re.findall(r"classforge:[a-z0-9_:]+", expr):
            assert name in recorded, f"{name} is not a recording rule"
        for name in re.findall(r"\bclassforge_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|sum|count|total)$", "", name)
            assert f'"{base}' in metric_sources or f'"{name}"' in metric_sources, f"{name} is not a metric we export"


# --------------------------------------------------------------------------- Dockerfiles

def test_gpu_dockerfile_installs_from_the_lock_pinned_and_non_root():
    text = (DEPLOY / "docker" / "Dockerfile.gpu").read_text()
    assert "COPY requirements.lock" in text and re.search(r"pip install -r requirements\.lock\b", text)
    assert "-r requirements.lock" in (ROOT / "Makefile").read_text(), "the Makefile installs from the same lock"
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) >= 2, "multi-stage"
    images = re.findall(r"^ARG\s+\w+_IMAGE=(\S+)", text, re.M) + [f for f in froms if not f.startswith("$")]
    assert images and all(re.search(r"@sha256:[0-9a-f]{64}$", image) for image in images), images
    assert re.search(r"^USER 10001", text, re.M)
    assert "PYTHONUNBUFFERED=1" in text
    assert 'ENTRYPOINT ["classforge", "serve"]' in text
    assert "COPY --from=builder /opt/venv /opt/venv" in text


def _dockerfile_stages(text: str) -> dict[str, str]:
    """{stage name: its lines}, for a multi-stage Dockerfile."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_service_images_install_only_from_the_wheelhouse_and_each_only_what_it_needs():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    stages = _dockerfile_stages(text)
    installs = re.findall(r"pip install ([^\n]*)", text.replace("\\\n", " "))  # continuation lines joined
    assert installs and all("--no-index" in i and "--find-links /wheels" in i for i in installs), installs
    assert all("-c /requirements.lock" in i for i in installs)
    assert "tensorflow" not in stages["light-deps"], "the light services must not install TensorFlow"
    assert "tensorflow-serving-api" in stages["inference-deps"] and "raise ImportError" in stages["inference-deps"]
    assert re.search(r"pip install [^\n]* tensorflow ", stages["tf-deps"].replace("\\\n", " "))
    uses = {"jobs": "light-runtime", "ingest": "light-runtime", "tfrecords": "light-runtime",
            "trainer": "tf-runtime", "evaluator": "tf-runtime", "model-server": "tf-runtime"}
    base_of = {stage: base for base, stage in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M)}
    for service in [*SERVICES, "model-server"]:
        stage = stages[service]
        assert f'CMD ["{service}"]' in stage, service
        assert re.search(rf'HEALTHCHECK .*"services\.common\.healthcheck", "--of", "{service}"', stage), service
        if service in uses:
            assert base_of[service] == uses[service], service
    assert "COPY --from=inference-deps /opt/venv /opt/venv" in stages["inference"]
    for runtime in ("light-runtime", "tf-runtime", "inference"):
        assert re.search(r"^USER 10001:10001", stages[runtime], re.M), runtime
    assert 'ENTRYPOINT ["python", "-m", "services.cli", "serve"]' in stages["runtime"]
    assert "PYTHONUNBUFFERED=1" in stages["runtime"]
    base = (DEPLOY / "docker" / "base.sh").read_text()
    assert re.search(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base), "the pulled base is pinned by digest"
    assert "debootstrap" in base


def test_serve_alone_loads_no_other_service_command():
    """A light image has no TensorFlow or matplotlib: `classforge serve NAME` must not import every
    service's command module."""
    code = ("import sys; from services import cli; parser = cli.serve_only_parser(); "
            "parser.parse_args(['jobs']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'matplotlib', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_gpu_lock_only_adds_cuda_wheels():
    def names(path: Path) -> set[str]:
        return {re.split(r"[=<>]", line)[0].lower().replace("_", "-") for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    gpu = names(DEPLOY / "docker" / "requirements-gpu.lock")
    assert gpu and all(n.startswith("nvidia-") for n in gpu)
    assert not gpu & names(ROOT / "requirements.lock")
    assert all("==" in line for line in (DEPLOY / "docker" / "requirements-gpu.lock").read_text().splitlines()
               if line.strip() and not line.startswith("#"))


# --------------------------------------------------------------------------- the Compose health check

def test_healthcheck_module_reports_serving_not_serving_and_unreachable():
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from services.common import healthcheck

    PLAINTEXT = {"CLASSFORGE_GRPC_PLAINTEXT": "true"}  # this server has no TLS; the TLS check is in test_tls.py
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert healthcheck.main(["--port", str(port), "--timeout", "5"], environ=PLAINTEXT) == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert healthcheck.main(["--port", str(port), "--timeout", "5"], environ=PLAINTEXT) == 0
    finally:
        server.stop(None)
    assert healthcheck.main(["--port", str(port), "--timeout", "1"], environ=PLAINTEXT) == 1
    assert healthcheck.default_port("jobs", environ={}) == DEFAULT_PORTS["jobs"][0]
    assert healthcheck.default_port("jobs", environ={"CLASSFORGE_GRPC_PORT": "6000"}) == 6000
    result = subprocess.run([sys.executable, "-m", "services.common.healthcheck"], capture_output=True, text=True,
                            cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2


def test_every_deployed_service_is_a_classforge_serve_command():
    """Compose and Kubernetes run `classforge serve <name>`; an unregistered name exits at once."""
    from services import cli

    missing = [s for s in SERVICES if s not in cli.SERVICES]
    assert not missing, f"services/cli.py SERVICES lacks {missing}: their containers would exit at start"
