# The kit's entry points. `make help` lists them. Everything a fresh Debian machine needs
# (the venv, a Docker engine, the base images, Debian packages for the app tests) is set up
# on first use by the scripts in tools/.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= $(if $(CI),false,true)
export PY_COLORS ?= $(if $(CI),0,1)
# Molecule draws boxes at the terminal width; wide enough that test names stay on one line.
export COLUMNS ?= 160

# Molecule scenarios run by `make test`, in order (fast feedback first).
SCENARIOS ?= $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/harness/molecule.yml molecule/roles/molecule.yml molecule/redis_ha/molecule.yml molecule/web/molecule.yml molecule/default/molecule.yml molecule/prod/molecule.yml)))
PLAYBOOKS := $(wildcard site.yml playbooks/*.yml)

.PHONY: help venv engine images dev status down test lint syntax test-roles test-app molecule bench chaos lock clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: ## Create or update .venv from requirements-dev.txt (no-op when the pins did not change)
	@tools/venv.sh

engine: ## Make sure a Docker engine answers (installs and starts one on a Debian host as root)
	@tools/docker-engine.sh

images: engine ## Build the Debian 13 and 12 base images if missing or if their recipe changed
	@tools/base-image.sh trixie bookworm

dev: venv images ## Deploy the development topology on local containers (localhost:8080)
	@tools/dev.sh up

status: venv ## The development topology at a glance (playbooks/status.yml); fails on a disagreement
	@ansible-playbook -i inventories/dev playbooks/status.yml $(if $(JSON),-e status_json=$(JSON))

down: venv ## Remove the development containers, network and volumes
	@tools/dev.sh down

test: lint test-app test-roles molecule ## Every check: lint, app tests, role and module checks, every Molecule scenario
	@echo "==> make test: all checks passed"

lint: venv ## ansible-lint (production profile), yamllint, ruff, promtool on monitoring/, playbook syntax check
	yamllint --strict .
	@# Molecule platforms share settings through YAML merge keys, which yamllint checks
	@# correctly but Ansible's loader reports as duplicate keys: silence only that warning here.
	ANSIBLE_DUPLICATE_YAML_DICT_KEY=ignore ansible-lint --strict
	ruff check .
	ruff format --check .
	@# Every module documents itself (ansible-doc parses DOCUMENTATION; a YAML slip fails here).
	@for m in plugins/modules/*.py; do \
	  ansible-doc "kit.jobqueue.$$(basename "$$m" .py)" >/dev/null || exit 1; \
	done; echo "ansible-doc ok: $$(ls plugins/modules/*.py | wc -l) modules"
	@# The repository is the collection kit.jobqueue: it must build (molecule/redis_ha installs it).
	ansible-galaxy collection build --force --output-path .cache/collection >/dev/null && echo "collection builds: $$(ls .cache/collection)"
	@# Alert rules (promtool check and unit tests), the example Prometheus config, the Grafana dashboard.
	python tools/check-monitoring.py
	@$(MAKE) syntax

syntax: venv ## Syntax-check the playbooks
	@for pb in $(PLAYBOOKS); do \
	  ansible-playbook --syntax-check -i localhost, "$$pb" >/dev/null && echo "syntax ok: $$pb"; \
	done

test-roles: venv ## Role preflight checks and the modules' logic, on the controller (the module tests need redis-server: run after test-app)
	@# Two pytest processes: most tests wait on an ansible-playbook or a redis-server of their own.
	pytest -p no:cacheprovider -q -n 2 tests

test-app: venv ## The queueing app's tests against real redis-server and redis-sentinel
	@tools/need.sh openssl:openssl # the TLS tests make their certificates with it
	@# Four pytest processes (most tests wait on Sentinel or a worker, not on a core), each with
	@# its own Redis group; a file's tests stay together.
	@if [ -f app/pyproject.toml ]; then tools/app-tests.sh -n 4 --dist loadfile; else echo "no app/ yet: nothing to test"; fi

molecule: venv images ## Run every Molecule scenario (SCENARIOS="redis_ha web" to choose)
	@tools/need.sh iptables:iptables nsenter:util-linux chromium:chromium chromedriver:chromium-driver
	@for s in $(SCENARIOS); do \
	  echo "==> molecule test -s $$s"; \
	  start=$$(date +%s); \
	  molecule test -s "$$s"; \
	  echo "==> scenario $$s passed in $$(( $$(date +%s) - start ))s"; \
	done

bench: venv images ## Speed and memory, each beside a baseline of the same run (BENCH_DEPLOY=0, BENCH_DRILLS=N): bench/results/
	@tools/need.sh wrk:wrk iptables:iptables nsenter:util-linux
	@tools/venv.sh .venv-bench bench/requirements.txt
	@python tools/bench.py

chaos: venv images ## Every fault drill CHAOS_DRILLS times (5) on the dev topology: table, JSON in bench/results/
	@tools/need.sh iptables:iptables nsenter:util-linux
	@python tools/chaos.py

lock: venv ## Re-resolve requirements-dev.txt and the app's lock files (needs the package index)
	@tools/lock.sh
	@python tools/lock-app.py

clean: ## Remove the venv and caches (images and containers stay: see `make down`)
	rm -rf $(VENV) .venv-app .cache .ruff_cache
