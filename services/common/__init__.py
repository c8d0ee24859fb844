"""Runtime shared by every classforge service: settings, logging, metrics, gRPC bootstrap,
event bus and object store. Written once here, used by all services."""
