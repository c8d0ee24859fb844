"""classforge services: one package per gRPC service, shared runtime in services.common."""
