"""The deployment files (issue #9) checked without a Docker engine or a cluster:

- docker-compose.yml: `docker-compose config` (Debian's docker-compose 1.29, no engine needed);
- Kubernetes: every overlay renders with kustomize (and `kubectl kustomize` where kubectl exists), every
  rendered object validates against the Kubernetes 1.32 API schema (kubernetes-validate's schemas,
  installed once, nothing downloaded while testing), plus the hardening the issue asks for;
- every variable a service's settings class requires is set in Compose and Kubernetes, and nothing
  sets a CLASSFORGE_ variable no settings class reads (typo guard);
- promtool check config / check rules / test rules; the Grafana dashboard's queries;
- issue #16: no credential committed or defaulted (Compose refuses to start without the generated ones;
  the k8s overlays generate their Secrets from git-ignored files), deploy/compose/secrets.sh's CA,
  certificates, tokens and TF Serving SSLConfig, TLS + auth wired into every service, ports on loopback,
  and the NetworkPolicies (only jobs and inference reachable from outside the namespace);
- the Dockerfiles install from requirements.lock, pinned by digest, non-root.

Tools come from deploy/tools/install.sh (idempotent, cached under $CLASSFORGE_CACHE). A test skips only
when its tool cannot be installed on this machine, and says so in the skip reason.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest
import yaml

from services.common.settings import DEFAULT_PORTS, REQUIRED, ServiceSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S = DEPLOY / "k8s"
OVERLAYS = ["dev", "gpu", "operators", "multiworker"]
KUBERNETES_VERSION = "1.32.0"
# Custom resources of the operators overlay: their CRDs (Strimzi, MinIO operator) are not shipped, so
# only their shape is checked here.
# Secrets the base only references (deploy/k8s/base/kustomization.yaml): an overlay generates them, or the
# cluster's secret store provides them (the gpu overlay). Their keys, by contract.
EXTERNAL_SECRETS = {"classforge-s3": {"CLASSFORGE_S3_ACCESS_KEY", "CLASSFORGE_S3_SECRET_KEY"},
                    "classforge-tls": {"tls.crt", "tls.key", "ca.crt"},
                    "classforge-auth": {"tokens.yaml", "identities.yaml"},
                    "tf-serving-tls": {"ssl.config"}}
# Credentials that were once committed or defaulted: none may appear in a deployment file again.
OLD_CREDENTIALS = ["classforge-secret", "change-me", "change-me-too", "change-me-please",
                   "GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:-", "MINIO_ROOT_PASSWORD:-",
                   "MINIO_ROOT_USER:-", "CLASSFORGE_S3_SECRET_KEY=classforge"]
CUSTOM_KINDS = {("kafka.strimzi.io/v1beta2", "Kafka"), ("kafka.strimzi.io/v1beta2", "KafkaNodePool"),
                ("kafka.strimzi.io/v1beta2", "KafkaTopic"), ("minio.min.io/v2", "Tenant"),
                ("kafka.strimzi.io/v1beta2", "KafkaUser"),
                ("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate"),
                ("kubeflow.org/v1", "TFJob")}
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


@functools.cache
def compose_secrets() -> Path:
    """A fresh set from deploy/compose/secrets.sh (in a temporary folder, never the repo's)."""
    folder = Path(tempfile.mkdtemp(prefix="classforge-secrets-")) / "secrets"
    subprocess.run(["bash", str(DEPLOY / "compose" / "secrets.sh"), str(folder)], check=True, capture_output=True,
                   timeout=120)
    return folder


def _compose_service_name(spec: dict) -> str | None:
    command = spec.get("command") or []
    return command[0] if command and command[0] in SERVICES else None


def test_compose_config_validates():
    docker_compose = tool("DOCKER_COMPOSE")
    env_file = ["--env-file", str(compose_secrets() / "compose.env")]
    for files in (["-f", str(COMPOSE_FILE)], ["-f", str(COMPOSE_FILE), "-f", str(ROOT / "docker-compose.override.yml")],
                  ["-f", str(COMPOSE_FILE), "-f", str(DEPLOY / "compose" / "local-images.yml"),
                   "-f", str(DEPLOY / "compose" / "test.yml")]):
        for profile in ([], ["--profile", "gpu"]):
            result = subprocess.run([docker_compose, *env_file, *files, *profile, "config", "-q"],
                                    capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
            assert result.returncode == 0, result.stderr
    services = subprocess.run([docker_compose, *env_file, "-f", str(COMPOSE_FILE), "--profile", "gpu", "config",
                               "--services"], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
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


def test_compose_trainer_scales_out_without_sharing_scratch():
    """`docker compose up --scale trainer=N`: no fixed container name or host port, and each replica's
    scratch is its own (an anonymous volume), as replicas take over each other's jobs (job leases)."""
    services = compose()["services"]
    named = set(compose().get("volumes") or {})
    for name in ("trainer", "trainer-gpu"):
        spec = services[name]
        assert "container_name" not in spec and "ports" not in spec, name
        scratch = [v for v in spec["volumes"] if str(v).split(":")[-1] == "/var/lib/classforge/trainer"
                   or str(v) == "/var/lib/classforge/trainer"]
        assert scratch == ["/var/lib/classforge/trainer"], (name, spec["volumes"])
    assert not {v for v in named if v.startswith("trainer")}, named


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
def k8s_with_secrets() -> Path:
    """A copy of deploy/k8s whose dev and operators overlays have their git-ignored secret files, generated
    by deploy/k8s/secrets.sh as a user would (the repo's own overlays are left as committed)."""
    copy = Path(tempfile.mkdtemp(prefix="classforge-k8s-")) / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns(".secrets"))
    for overlay in ("dev", "operators"):
        subprocess.run(["bash", str(K8S / "secrets.sh"), str(copy / "overlays" / overlay)], check=True,
                       capture_output=True, timeout=120)
    return copy


@functools.cache
def rendered(overlay: str) -> list[dict]:
    result = subprocess.run([tool("KUSTOMIZE"), "build", str(k8s_with_secrets() / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kustomize build {overlay}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_with_kubectl_kustomize(overlay):
    kubectl = tools().get("KUBECTL")
    if not kubectl:
        pytest.skip("kubectl is not installed; the kustomize binary from deploy/tools/install.sh renders every "
                    "overlay in the other tests")
    result = subprocess.run([kubectl, "kustomize", str(k8s_with_secrets() / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
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
            name = source["secretRef"]["name"]
            if name in secrets:
                secret = secrets[name]
                env |= set(secret.get("data", {})) | set(secret.get("stringData", {}))
            else:  # provided by the cluster (the gpu overlay generates none), keys by contract
                env |= EXTERNAL_SECRETS[name]
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
            # Kubernetes' own grpc probe speaks plaintext only; the ports serve TLS, the health check module
            # speaks it (CLASSFORGE_TLS_* of the container)
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert container[probe]["exec"]["command"] == \
                    ["python", "-m", "services.common.healthcheck", "--of", name], f"{name}: {probe}"
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
    assert config["data"]["CLASSFORGE_KAFKA_BOOTSTRAP"] == "classforge-kafka-bootstrap:9093"
    # Kafka: TLS + SCRAM only, the password Strimzi generates; MinIO: HTTPS with the classforge CA
    (kafka,) = _by_kind(docs, "Kafka").values()
    assert [(listener["tls"], listener["authentication"]["type"]) for listener in kafka["spec"]["kafka"]["listeners"]] \
        == [(True, "scram-sha-512")]
    assert config["data"]["CLASSFORGE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["data"]["CLASSFORGE_S3_SECURE"] == "true" and config["data"]["CLASSFORGE_S3_ENDPOINT"] == "minio:443"
    (tenant,) = _by_kind(docs, "Tenant").values()
    certificate = _by_kind(docs, "Certificate")[tenant["spec"]["externalCertSecret"][0]["name"]]["spec"]
    assert "minio" in certificate["dnsNames"]
    for name in SERVICES:
        container = _by_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
        password = {e["name"]: e for e in container["env"]}["CLASSFORGE_KAFKA_SASL_PASSWORD"]
        assert password["valueFrom"]["secretKeyRef"] == {"name": "classforge", "key": "password"}, name
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert config["data"]["CLASSFORGE_KAFKA_SSL_CA"].rsplit("/", 1)[0] in mounts, name
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


# --------------------------------------------------------------------------- issue #16: credentials, TLS, policies

def _deployment_files() -> list[Path]:
    """Every committed deployment file: Compose, the Compose helpers, Kubernetes, Prometheus, Grafana.
    Not deploy/local: the test harness's throw-away processes on 127.0.0.1, never a deployment."""
    tracked = subprocess.run(["git", "ls-files", "docker-compose*.yml", "deploy", "Makefile"], capture_output=True,
                             text=True, cwd=ROOT, check=True).stdout.split()
    return [ROOT / p for p in tracked if (ROOT / p).is_file() and not p.endswith((".json", ".lock", ".py"))
            and not p.startswith("deploy/local/")]


def test_no_credential_is_committed_or_defaulted():
    files = _deployment_files()
    assert any(p.name == "docker-compose.yml" for p in files) and any("k8s" in p.parts for p in files)
    found = [f"{p.relative_to(ROOT)}: {old}" for p in files for old in OLD_CREDENTIALS if old in p.read_text()]
    assert not found, "\n".join(found)
    # rendered overlays: no Secret holds a literal committed anywhere in the repo's manifests
    committed = "\n".join(p.read_text() for p in files)
    for overlay in OVERLAYS:
        for doc in _by_kind(rendered(overlay), "Secret").values():
            for key, value in {**doc.get("stringData", {}), **doc.get("data", {})}.items():
                assert value not in committed, f"{overlay}: Secret {doc['metadata']['name']} {key} is committed"
    # secretGenerators read files, never literals
    for kustomization in K8S.rglob("kustomization.yaml"):
        for generator in yaml.safe_load(kustomization.read_text()).get("secretGenerator", []):
            assert "literals" not in generator, f"{kustomization.relative_to(ROOT)}: {generator['name']} has literals"
            for source in generator.get("envs", []) + [f.split("=", 1)[-1] for f in generator.get("files", [])]:
                assert source.startswith(".secrets/"), f"{generator['name']}: {source} is not git-ignored"
    ignored = subprocess.run(["git", "check-ignore", "deploy/compose/.secrets/x", "deploy/k8s/overlays/dev/.secrets/x",
                              "deploy/k8s/overlays/operators/.secrets/x"], capture_output=True, text=True, cwd=ROOT)
    assert len(ignored.stdout.split()) == 3, "the generated secrets must be git-ignored"


def test_compose_credentials_have_no_default_and_compose_refuses_without_them():
    text = COMPOSE_FILE.read_text()
    for name in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "CLASSFORGE_COMPOSE_SECRETS"):
        uses = re.findall(rf"\$\{{{name}(:?[-?]?)", text)
        assert uses and set(uses) == {":?"}, f"{name} must always be ${{{name}:?…}}, found {uses}"
    docker_compose = tool("DOCKER_COMPOSE")
    result = subprocess.run([docker_compose, "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True,
                            cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and "deploy/compose/secrets.sh" in result.stderr, result.stderr


def test_compose_publishes_only_on_loopback_and_not_kafka_minio_console_or_tf_serving():
    override = yaml.safe_load((ROOT / "docker-compose.override.yml").read_text())["services"]
    published = {name: spec["ports"] for name, spec in override.items()}
    for name, ports in published.items():
        assert all(str(p).startswith("127.0.0.1:") for p in ports), f"{name} publishes beyond loopback: {ports}"
    assert "kafka" not in published and "tf-serving" not in published and "kafka-exporter" not in published
    assert not any(":9001" in p for p in published.get("minio", [])), "the MinIO console is published"
    assert {"jobs", "inference"} <= set(published)
    assert all("ports" not in spec for spec in compose()["services"].values()), "ports belong in the override"


def test_compose_services_serve_tls_with_auth_from_read_only_mounts():
    services = compose()["services"]
    for name, spec in services.items():
        service = _compose_service_name(spec)
        if service is None:
            continue
        env = spec["environment"]
        mounts = {v.split(":")[-2]: v for v in spec["volumes"] if v.count(":") >= 2}
        # Certificate identities only where client certificates are verified (auth refuses them otherwise).
        expected = "none" if service in ("jobs", "ingest", "inference") else "require"
        assert env["CLASSFORGE_TLS_CLIENT_AUTH"] == expected, name
        assert ("CLASSFORGE_AUTH_MTLS_IDENTITIES" in env) == (expected == "require"), name
        for variable in ("CLASSFORGE_TLS_CERT", "CLASSFORGE_TLS_KEY", "CLASSFORGE_TLS_CA",
                         "CLASSFORGE_AUTH_TOKENS_FILE", "CLASSFORGE_AUTH_MTLS_IDENTITIES"):
            path = env.get(variable)
            assert path is None or (path in mounts and mounts[path].endswith(":ro")), \
                f"{name}: {variable}={path} is not mounted ro"
        # each container its own certificate: CN = its Compose name
        assert f"/tls/{name}/tls.key:" in mounts[env["CLASSFORGE_TLS_KEY"]], name
        assert "CLASSFORGE_GRPC_PLAINTEXT" not in env and "CLASSFORGE_AUTH_DISABLED" not in env, name
        assert spec.get("read_only") is True and spec["security_opt"] == ["no-new-privileges:true"], name
    tfs = services["tf-serving"]
    assert "--ssl_config_file=/etc/tf-serving-tls/ssl.config" in tfs["command"]
    assert any(v.endswith("/tf-serving/ssl.config:/etc/tf-serving-tls/ssl.config:ro") for v in tfs["volumes"])
    init = services["models-init"]
    assert init["user"] == "10001:10001" and init["cap_drop"] == ["ALL"], "models-init must run unprivileged"


def test_secrets_script_makes_a_ca_certificates_tokens_and_ssl_config_once():
    folder = compose_secrets()
    assert (folder.stat().st_mode & 0o777) == 0o700
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    subprocess.run(["bash", str(DEPLOY / "compose" / "secrets.sh"), str(folder)], check=True, capture_output=True)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before, "a second run changed secrets"

    env = dict(line.split("=", 1) for line in (folder / "compose.env").read_text().splitlines()
               if "=" in line and not line.startswith("#"))
    assert env["CLASSFORGE_COMPOSE_SECRETS"] == str(folder)
    assert len(env["MINIO_ROOT_PASSWORD"]) >= 32 and len(env["GRAFANA_ADMIN_PASSWORD"]) >= 24
    other = Path(tempfile.mkdtemp()) / "s"
    subprocess.run(["bash", str(DEPLOY / "compose" / "secrets.sh"), str(other)], check=True, capture_output=True)
    assert (other / "compose.env").read_text() != (folder / "compose.env").read_text(), "secrets are not random"

    ca = folder / "ca" / "ca.crt"
    for name in (*SERVICES, "tf-serving"):
        cert = folder / "tls" / name / "tls.crt"
        verified = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        text = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-subject", "-ext", "subjectAltName"],
                              capture_output=True, text=True, check=True).stdout
        assert re.search(rf"CN\s*=\s*{name}\b", text), text
        assert f"DNS:{name}," in text and "DNS:localhost" in text and "IP Address:127.0.0.1" in text, text
        assert (folder / "tls" / name / "ca.crt").read_bytes() == ca.read_bytes()
    # a certificate from another CA does not verify against this one (the check above can fail)
    foreign = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(other / "tls" / "jobs" / "tls.crt")],
                             capture_output=True, text=True)
    assert foreign.returncode != 0

    tokens = yaml.safe_load((folder / "tokens.yaml").read_text())
    operator = dict(line.split("=", 1) for line in (folder / "operator.env").read_text().splitlines()
                    if "=" in line and not line.startswith("#"))
    by_role = {t["role"]: t for t in tokens}
    assert set(by_role) == {"viewer", "submitter", "admin"}
    for role, entry in by_role.items():
        plain = operator[f"CLASSFORGE_TOKEN_{role.upper()}"]
        assert entry["token_sha256"] == hashlib.sha256(plain.encode()).hexdigest(), role
        assert plain not in (folder / "tokens.yaml").read_text(), "tokens.yaml must hold hashes only"
        assert set(entry) == {"token_sha256", "subject", "role"}
    identities = yaml.safe_load((folder / "identities.yaml").read_text())
    assert identities["inference"] == "admin", "inference publishes and rolls back on the model server"
    assert set(identities.values()) <= {"viewer", "submitter", "admin"}

    # TF Serving's --ssl_config_file: a text SSLConfig (tensorflow_serving/config/ssl_config.proto) with the PEMs
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
    f = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto(name="ssl.proto", package="tfs", message_type=[
        descriptor_pb2.DescriptorProto(name="SSLConfig", field=[
            f(name="server_key", number=1, type=9, label=1), f(name="server_cert", number=2, type=9, label=1),
            f(name="custom_ca", number=3, type=9, label=1), f(name="client_verify", number=4, type=8, label=1)])
    ]).SerializeToString())
    ssl = text_format.Parse((folder / "tf-serving" / "ssl.config").read_text(),
                            message_factory.GetMessageClass(pool.FindMessageTypeByName("tfs.SSLConfig"))())
    assert ssl.server_key == (folder / "tls" / "tf-serving" / "tls.key").read_text()
    assert ssl.server_cert == (folder / "tls" / "tf-serving" / "tls.crt").read_text()
    assert ssl.custom_ca == ca.read_text() and ssl.client_verify


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_services_mount_tls_and_auth_secrets(overlay):
    docs = rendered(overlay)
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("classforge-config"))
    for name, doc in _by_kind(docs, "Deployment").items():
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        if name == "tf-serving":
            assert "--ssl_config_file=/etc/tf-serving-tls/ssl.config" in container["args"]
            assert secrets["tls"].startswith("tf-serving-tls") and mounts["tls"]["readOnly"] is True
            assert mounts["tls"]["mountPath"] == "/etc/tf-serving-tls"
            continue
        assert secrets["tls"].startswith("classforge-tls") and secrets["auth"].startswith("classforge-auth"), name
        assert all(mounts[v]["readOnly"] is True and "subPath" not in mounts[v] for v in ("tls", "auth")), name
        env = {**config["data"], **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}
        assert env["CLASSFORGE_TLS_CERT"] == f"{mounts['tls']['mountPath']}/tls.crt", name
        assert env["CLASSFORGE_AUTH_TOKENS_FILE"] == f"{mounts['auth']['mountPath']}/tokens.yaml", name
        expected = "none" if name in ("jobs", "ingest", "inference") else "require"
        assert env["CLASSFORGE_TLS_CLIENT_AUTH"] == expected, name
        assert ("CLASSFORGE_AUTH_MTLS_IDENTITIES" in env) == (expected == "require"), name
        assert "CLASSFORGE_GRPC_PLAINTEXT" not in env and "CLASSFORGE_AUTH_DISABLED" not in env, name
    secrets = _by_kind(docs, "Secret")
    generated = set(secrets) | {n.rsplit("-", 1)[0] for n in secrets}  # kustomize appends -<hash>
    if overlay == "dev":
        assert set(EXTERNAL_SECRETS) <= generated, generated
        tls = next(d for n, d in _by_kind(docs, "Secret").items() if n.startswith("classforge-tls"))
        assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == EXTERNAL_SECRETS["classforge-tls"]
    if overlay == "operators":  # classforge-tls from cert-manager, issued by the generated CA
        assert set(EXTERNAL_SECRETS) - {"classforge-tls"} <= generated, generated
        certificate = _by_kind(docs, "Certificate")["classforge-tls"]["spec"]
        issuer = _by_kind(docs, "Issuer")[certificate["issuerRef"]["name"]]["spec"]
        ca = _by_kind(docs, "Secret")[issuer["ca"]["secretName"]]
        assert certificate["secretName"] == "classforge-tls" and ca["type"] == "kubernetes.io/tls"
        assert {"server auth", "client auth"} <= set(certificate["usages"])
        for name in (*SERVICES, "tf-serving"):
            assert name in certificate["dnsNames"], name
        assert "127.0.0.1" in certificate["ipAddresses"]


def _selected(policy: dict, labels: dict) -> bool:
    selector = policy["spec"]["podSelector"]
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _ingress_sources(docs: list[dict], labels: dict) -> list[tuple[str, int | str]]:
    """(who, port) pairs the pod with these labels accepts: who is `anyone` (no `from`, or a namespaceSelector
    that admits every namespace), `namespace` (pods of this namespace), `prometheus`, or `pod:<name>`."""
    allowed = []
    for policy in _by_kind(docs, "NetworkPolicy").values():
        if "Ingress" not in policy["spec"].get("policyTypes", []) or not _selected(policy, labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])] or ["*"]
            peers = rule.get("from")
            if not peers:
                allowed += [("anyone", port) for port in ports]
                continue
            for peer in peers:
                namespace, pods = peer.get("namespaceSelector"), peer.get("podSelector")
                if "ipBlock" in peer or (namespace == {} and not pods):
                    who = "anyone"
                elif namespace is not None:
                    names = namespace.get("matchLabels", {}).get("kubernetes.io/metadata.name")
                    app = (pods or {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                    assert names and app, f"{policy['metadata']['name']}: a peer outside the namespace must be named"
                    who = app if app == "prometheus" else f"{names}/{app}"
                elif pods == {}:
                    who = "namespace"
                else:
                    who = "pod:" + pods["matchLabels"]["app.kubernetes.io/name"]
                allowed += [(who, port) for port in ports]
    return allowed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_from_outside_only_jobs_and_inference(overlay):
    docs = rendered(overlay)
    policies = _by_kind(docs, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    metrics = {DEFAULT_PORTS[s][1] for s in SERVICES} | {8501}
    public = {"jobs": {50051}, "inference": {50056, 8086}}
    for name, doc in _by_kind(docs, "Deployment").items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        sources = _ingress_sources(docs, labels)
        outside = {port for who, port in sources if who == "anyone"}
        assert outside == public.get(name, set()), f"{overlay}: {name} accepts from anyone on {outside}"
        container_ports = {p["containerPort"] for p in doc["spec"]["template"]["spec"]["containers"][0]["ports"]}
        for port in container_ports & metrics:
            assert {who for who, p in sources if p == port} == {"prometheus"}, f"{overlay}: {name}:{port}"
        assert all(p != "*" for _, p in sources), f"{overlay}: {name} has a rule for every port"
    tf_serving = _by_kind(docs, "Deployment")["tf-serving"]["spec"]["template"]["metadata"]["labels"]
    assert {who for who, p in _ingress_sources(docs, tf_serving) if p == 8500} == {"pod:inference"}
    ingest = _by_kind(docs, "Deployment")["ingest"]["spec"]["template"]["metadata"]["labels"]
    assert {who for who, p in _ingress_sources(docs, ingest) if p == 50052} == {"namespace"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_limit_egress_to_dns_kafka_minio_and_tf_serving(overlay):
    docs = rendered(overlay)
    policies = _by_kind(docs, "NetworkPolicy")
    for name, doc in _by_kind(docs, "Deployment").items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        egress = [p for p in policies.values() if "Egress" in p["spec"]["policyTypes"] and _selected(p, labels)]
        assert egress, f"{overlay}: {name} has unrestricted egress"
        ports = {port["port"] for p in egress for rule in p["spec"].get("egress", []) for port in rule.get("ports", [])}
        assert all(rule.get("ports") for p in egress for rule in p["spec"].get("egress", [])), name
        kafka = 9093 if overlay == "operators" else 9092  # Strimzi's TLS + SCRAM listener
        if name == "tf-serving":
            assert ports == set(), f"{overlay}: tf-serving opens connections to {ports}"
        elif name == "inference":
            assert ports == {53, kafka, 9000, 8500}, ports
        else:
            assert ports == {53, kafka, 9000}, f"{overlay}: {name} reaches {ports}"
    kafka_peer = policies["classforge-egress"]["spec"]["egress"][1]["to"][0]
    expected = {"base": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}}},
                "dev": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "infra"}}},
                "operators": {"podSelector": {"matchLabels": {"strimzi.io/cluster": "classforge"}}}}
    assert kafka_peer == expected.get(overlay, expected["base"]), kafka_peer


def test_generated_certificates_serve_grpc_mutual_tls_on_loopback():
    """The certificates secrets.sh makes work as Compose uses them: a server with its own certificate that
    requires client certificates from the CA; a client that trusts the CA and presents its own, dialling
    127.0.0.1 (the health check) or the Compose name (service to service). Plaintext, an unknown CA and a
    missing client certificate are refused."""
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    folder = compose_secrets()
    tls = folder / "tls"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials([((tls / "tf-serving" / "tls.key").read_bytes(),
                                                (tls / "tf-serving" / "tls.crt").read_bytes())],
                                              root_certificates=(folder / "ca" / "ca.crt").read_bytes(),
                                              require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()

    def check(channel: grpc.Channel) -> grpc.StatusCode:
        with channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

    def client(ca: Path, cert: str | None = "inference") -> grpc.ChannelCredentials:
        pair = {} if cert is None else {"private_key": (tls / cert / "tls.key").read_bytes(),
                                        "certificate_chain": (tls / cert / "tls.crt").read_bytes()}
        return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes(), **pair)

    try:
        ca = folder / "ca" / "ca.crt"
        assert check(grpc.secure_channel(f"127.0.0.1:{port}", client(ca))) == grpc.StatusCode.OK
        by_name = grpc.secure_channel(f"127.0.0.1:{port}", client(ca),
                                      options=[("grpc.ssl_target_name_override", "tf-serving")])
        assert check(by_name) == grpc.StatusCode.OK
        wrong_name = grpc.secure_channel(f"127.0.0.1:{port}", client(ca),
                                         options=[("grpc.ssl_target_name_override", "jobs")])
        assert check(wrong_name) == grpc.StatusCode.UNAVAILABLE, "a certificate must name only its own service"
        assert check(grpc.insecure_channel(f"127.0.0.1:{port}")) == grpc.StatusCode.UNAVAILABLE
        assert check(grpc.secure_channel(f"127.0.0.1:{port}", client(ca, cert=None))) == grpc.StatusCode.UNAVAILABLE
        foreign = Path(tempfile.mkdtemp()) / "s"
        subprocess.run(["bash", str(DEPLOY / "compose" / "secrets.sh"), str(foreign)], check=True, capture_output=True)
        assert check(grpc.secure_channel(f"127.0.0.1:{port}", client(foreign / "ca" / "ca.crt"))) == \
            grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def _requirement_closure(names: set[str]) -> set[str]:
    """The distributions `names` install, their requirements included (markers for extras skipped)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen: set[str] = set()
    todo = [norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(norm(requirement.name))
    return seen


@pytest.mark.parametrize("service", ["jobs", "ingest", "tfrecords"])
def test_light_images_install_every_distribution_their_service_imports(service):
    """A light image installs a hand-picked list (deploy/docker/Dockerfile, light-deps): every third-party
    module the service loads, started as its image starts it (and its health check), must come from that
    list or what it requires, or the container dies at start with ModuleNotFoundError."""
    from importlib import metadata

    stage = _dockerfile_stages((DEPLOY / "docker" / "Dockerfile").read_text())["light-deps"].replace("\\\n", " ")
    (install,) = re.findall(r"pip install [^\n]*", stage)
    listed = {w for w in install.split()[3:] if not w.startswith(("-", "/"))}
    installed = _requirement_closure(listed)
    probe = (f"import sys, services.{service}.main, services.common.healthcheck, services.cli; "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'gen' / 'python'}"})
    assert loaded.returncode == 0, loaded.stderr
    owners = metadata.packages_distributions()
    # Loaded here but not needed in an image: grpcio tries `import grpc_tools` and goes on without it, and
    # _distutils_hack is setuptools' .pth hook in this venv.
    optional = {"grpc_tools", "_distutils_hack"}
    missing = {}
    for module in set(loaded.stdout.split()) - optional:
        for dist in owners.get(module, []):
            if re.sub(r"[-_.]+", "-", dist).lower() not in installed and dist.lower() != "classforge":
                missing[module] = dist
    assert not missing, f"{service} imports modules its image does not install: {missing}"


# --------------------------------------------------------------------------- issue #19: one job on several workers


def _worker_pods() -> dict[str, tuple[dict, dict]]:
    """variant -> (the object, its worker pod spec): the indexed Job (multiworker overlay) and the TFJob
    (operators overlay)."""
    job = _by_kind(rendered("multiworker"), "Job")["trainer-workers"]
    tfjob = _by_kind(rendered("operators"), "TFJob")["trainer-workers"]
    return {"indexed-job": (job, job["spec"]["template"]["spec"]),
            "tfjob": (tfjob, tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"])}


def test_multi_worker_variants_run_the_worker_entry_point_like_the_trainer():
    from services.trainer.settings import TrainerSettings, WorkerSettings

    known = {r[0] for r in TrainerSettings.describe()} | {r[0] for r in WorkerSettings.describe()} | {
        "CLASSFORGE_MWMS_WORKERS", "CLASSFORGE_MWMS_JOB_NAME", "CLASSFORGE_MWMS_SERVICE", "CLASSFORGE_MWMS_NAMESPACE",
        "CLASSFORGE_MWMS_PORT"}  # services/trainer/multiworker.py INDEXED_ENV
    for variant, (doc, pod) in _worker_pods().items():
        overlay = "multiworker" if variant == "indexed-job" else "operators"
        trainer = _by_kind(rendered(overlay), "Deployment")["trainer"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", "services.trainer.mwms_worker"], variant
        assert container["image"] == trainer["containers"][0]["image"], variant
        assert container["envFrom"] == trainer["containers"][0]["envFrom"], variant  # ConfigMap and S3 Secret
        assert pod["securityContext"] == trainer["securityContext"], variant
        assert container["securityContext"] == trainer["containers"][0]["securityContext"], variant
        assert pod["automountServiceAccountToken"] is False, variant
        volumes = {v["name"]: v for v in pod["volumes"]}
        trainer_volumes = {v["name"]: v for v in trainer["volumes"]}
        assert volumes["tls"] == trainer_volumes["tls"], variant  # the object store's CA
        assert "emptyDir" in volumes["tmp"], variant
        env = {e["name"] for e in container["env"]}
        unknown = sorted(v for v in env if v.startswith("CLASSFORGE_") and v not in known)
        assert not unknown, f"{variant} sets {unknown}, which no settings class reads"
        assert "CLASSFORGE_MWMS_JOB_ID" in env, variant
        assert (doc["spec"].get("suspend") or doc["spec"].get("runPolicy", {}).get("suspend")) is True, \
            f"{variant}: a template must not start before a job id is set"
    assert _by_kind(rendered("operators"), "TFJob")["trainer-workers"]["spec"]["tfReplicaSpecs"]["Worker"][
        "template"]["spec"]["containers"][0]["name"] == "tensorflow"  # the container the operator configures


def _env_of(container: dict, namespace: str) -> dict[str, str]:
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
    return env


def test_indexed_job_workers_compute_a_tf_config_that_names_each_pod():
    """What each pod of the indexed Job computes (the worker entry point's own function), against the pod
    DNS names the headless Service gives: <job>-<index>.<subdomain>.<namespace>.svc, on the port it opens."""
    from services.trainer.multiworker import is_chief, resolve_tf_config

    docs = rendered("multiworker")
    job = _by_kind(docs, "Job")["trainer-workers"]
    pod = job["spec"]["template"]["spec"]
    service = _by_kind(docs, "Service")[pod["subdomain"]]
    assert job["spec"]["completionMode"] == "Indexed"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    (container,) = pod["containers"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["collective"]
    assert [p["port"] for p in service["spec"]["ports"]] == [port]
    namespace = job["metadata"].get("namespace", "default")
    env = _env_of(container, namespace)
    workers = job["spec"]["completions"]
    assert job["spec"]["parallelism"] == workers == int(env["CLASSFORGE_MWMS_WORKERS"])
    expected = [f"{job['metadata']['name']}-{i}.{pod['subdomain']}.{namespace}.svc:{port}" for i in range(workers)]
    for index in range(workers):
        config = resolve_tf_config(env | {"JOB_COMPLETION_INDEX": str(index)})
        assert config == {"cluster": {"worker": expected}, "task": {"type": "worker", "index": index}}
        assert is_chief(config) == (index == 0)
    _check_collective_policy(docs, labels, port)
    trainer_env = _by_kind(docs, "Deployment")["trainer"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "CLASSFORGE_TRAINER_WORKER_LAUNCH", "value": "external"} in trainer_env  # waits for the Job


def test_tfjob_workers_accept_the_tf_config_the_operator_sets():
    """The Training Operator's TF_CONFIG for Worker replicas (kubeflow/training-operator, tensorflow.go:
    <name>-worker-<i>.<namespace>.svc:<tfjob-port>), as the worker entry point reads it."""
    from services.trainer.multiworker import is_chief, peers_of, resolve_tf_config

    docs = rendered("operators")
    tfjob = _by_kind(docs, "TFJob")["trainer-workers"]
    worker = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
    assert set(tfjob["spec"]["tfReplicaSpecs"]) == {"Worker"}  # no Chief replica: worker 0 is the chief
    (container,) = worker["template"]["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["tfjob-port"]
    namespace, name = tfjob["metadata"]["namespace"], tfjob["metadata"]["name"]
    hosts = [f"{name}-worker-{i}.{namespace}.svc:{port}" for i in range(worker["replicas"])]
    assert worker["replicas"] >= 2
    for index in range(worker["replicas"]):
        operator_env = {"TF_CONFIG": json.dumps({"cluster": {"worker": hosts},
                                                 "task": {"type": "worker", "index": index}, "environment": "cloud"})}
        config = resolve_tf_config(operator_env)
        assert is_chief(config) == (index == 0)
        assert peers_of(config) == [h for i, h in enumerate(hosts) if i != index]
    _check_collective_policy(docs, worker["template"]["metadata"]["labels"], port)


def _check_collective_policy(docs: list[dict], labels: dict, port: int) -> None:
    """The workers reach each other's collective port, and only that port is opened for them."""
    policy = _by_kind(docs, "NetworkPolicy")["trainer-workers-collective"]
    assert _selected(policy, labels)
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": port, "protocol": "TCP"}]
    assert all(_selected({"spec": {"podSelector": source["podSelector"]}}, labels) for source in ingress["from"])
