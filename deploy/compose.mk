# Compose targets, included from the Makefile:
#     -include deploy/compose.mk
# (`up` builds the images first with the Makefile's `images` target.)
# Needs a Docker engine with the Compose plugin (`docker compose`); COMPOSE overrides the command
# (e.g. COMPOSE=docker-compose for the standalone v1 binary, COMPOSE="podman compose").
COMPOSE ?= docker compose
# docker-compose.override.yml publishes the host ports. With no registry (nothing can be pulled), add the
# infrastructure images built from deploy/local's sources: make up COMPOSE_FILES="... deploy/compose/local-images.yml"
COMPOSE_FILES ?= docker-compose.yml docker-compose.override.yml
# Every credential, certificate and token of the stack, generated once by deploy/compose/secrets.sh (git-ignored;
# no credential has a default). The env file sets CLASSFORGE_COMPOSE_SECRETS, MinIO's and Grafana's passwords.
COMPOSE_SECRETS ?= deploy/compose/.secrets
COMPOSE_FILE_ARGS = --env-file $(COMPOSE_SECRETS)/compose.env $(addprefix -f ,$(COMPOSE_FILES))

.PHONY: up up-gpu down down-volumes compose-config compose-logs compose-ps compose-secrets

compose-secrets: ## generate the stack's passwords, CA, certificates and tokens once (kept on later runs)
	deploy/compose/secrets.sh $(COMPOSE_SECRETS) >/dev/null

up: images compose-secrets ## build the images and start the whole stack (Kafka, MinIO, TF Serving, Prometheus, Grafana, services)
	$(COMPOSE) $(COMPOSE_FILE_ARGS) up -d

up-gpu: images compose-secrets ## the same, with the trainer on an NVIDIA GPU (profile gpu; the CPU trainer scaled to 0)
	$(COMPOSE) $(COMPOSE_FILE_ARGS) --profile gpu up -d --build --scale trainer=0

down: compose-secrets ## stop the stack (volumes kept)
	$(COMPOSE) $(COMPOSE_FILE_ARGS) --profile gpu down --remove-orphans

down-volumes: compose-secrets ## stop the stack and delete its volumes (Kafka, MinIO, models, Prometheus, Grafana data)
	$(COMPOSE) $(COMPOSE_FILE_ARGS) --profile gpu down --remove-orphans --volumes

compose-config: compose-secrets ## print the resolved Compose file
	$(COMPOSE) $(COMPOSE_FILE_ARGS) --profile gpu config

compose-ps: compose-secrets ## show the containers and their health
	$(COMPOSE) $(COMPOSE_FILE_ARGS) --profile gpu ps

compose-logs: compose-secrets ## follow every container's logs
	$(COMPOSE) $(COMPOSE_FILE_ARGS) --profile gpu logs -f --tail=100
