"""Settings of the model server stand-in: no Kafka and no object store, only the model base path."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import DEFAULT_PORTS, ServerSecuritySettings, env

SERVICE_NAME = "model-server"


@dataclass(frozen=True)
class ModelServerSettings(ServerSecuritySettings):
    model_base_path: str = env("CLASSFORGE_MODEL_BASE_PATH",
                               help="directory holding <model>/<version>/saved_model.pb (TF Serving's layout)")
    model_config_file: str = env("CLASSFORGE_MODEL_CONFIG_FILE", "",
                                 "text-format ModelServerConfig (TF Serving's --model_config_file); empty: "
                                 "every directory under the base path is a model")
    poll_seconds: float = env("CLASSFORGE_MODEL_POLL_SECONDS", 1.0,
                              "how often the base path is scanned for new versions "
                              "(TF Serving's --file_system_poll_wait_seconds)")
    num_versions: int = env("CLASSFORGE_MODEL_NUM_VERSIONS", 1,
                            "versions kept loaded per discovered model (policy latest)")
    allow_labels_for_unavailable: bool = env("CLASSFORGE_ALLOW_VERSION_LABELS_FOR_UNAVAILABLE_MODELS", False,
                                             "as TF Serving's --allow_version_labels_for_unavailable_models")
    grpc_port: int = env("CLASSFORGE_GRPC_PORT", 0, "gRPC listen port; 0 means 8500")
    metrics_port: int = env("CLASSFORGE_METRICS_PORT", 0, "Prometheus /metrics port; 0 means 9107, -1 disables")
    listen_host: str = env("CLASSFORGE_LISTEN_HOST", "0.0.0.0", "address the gRPC and metrics servers bind")
    max_message_bytes: int = env("CLASSFORGE_MAX_MESSAGE_BYTES", 64 * 1024 * 1024,
                                 "largest gRPC message accepted or sent")
    grace_seconds: float = env("CLASSFORGE_GRACE_SECONDS", 10.0, "how long in-flight calls may finish after SIGTERM")
    worker_threads: int = env("CLASSFORGE_WORKER_THREADS", 16, "gRPC server thread pool size")
    log_level: str = env("CLASSFORGE_LOG_LEVEL", "INFO", "logging level")

    def ports(self) -> tuple[int, int]:
        grpc_default, metrics_default = DEFAULT_PORTS[SERVICE_NAME]
        return (self.grpc_port or grpc_default, self.metrics_port or metrics_default)
