# Compose targets, included from the Makefile:
#     -include deploy/compose.mk
# or used alone:   make -f deploy/compose.mk up
# Needs a Docker engine with the Compose plugin (`docker compose`); COMPOSE overrides the command
# (e.g. COMPOSE=docker-compose for the standalone v1 binary, COMPOSE="podman compose").
COMPOSE ?= docker compose
COMPOSE_FILE_PATH ?= docker-compose.yml

.PHONY: up up-gpu down down-volumes compose-config compose-logs compose-ps

up: ## build the images and start the whole stack (Kafka, MinIO, TF Serving, Prometheus, Grafana, services)
	$(COMPOSE) -f $(COMPOSE_FILE_PATH) up -d --build

up-gpu: ## the same, with the trainer on an NVIDIA GPU (profile gpu; the CPU trainer scaled to 0)
	$(COMPOSE) -f $(COMPOSE_FILE_PATH) --profile gpu up -d --build --scale trainer=0

down: ## stop the stack (volumes kept)
	$(COMPOSE) -f $(COMPOSE_FILE_PATH) --profile gpu down --remove-orphans

down-volumes: ## stop the stack and delete its volumes (Kafka, MinIO, models, Prometheus, Grafana data)
	$(COMPOSE) -f $(COMPOSE_FILE_PATH) --profile gpu down --remove-orphans --volumes

compose-config: ## print the resolved Compose file
	$(COMPOSE) -f $(COMPOSE_FILE_PATH) --profile gpu config

compose-ps: ## show the containers and their health
	$(COMPOSE) -f $(COMPOSE_FILE_PATH) --profile gpu ps

compose-logs: ## follow every container's logs
	$(COMPOSE) -f $(COMPOSE_FILE_PATH) --profile gpu logs -f --tail=100
