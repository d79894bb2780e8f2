#!/usr/bin/env bash
# `make dev` / `make down`: the development topology (inventories/dev) on local containers.
set -euo pipefail
cd "$(dirname "$0")/.."
inventory=inventories/dev

case "${1:-up}" in
  up)
    started=$(date +%s)
    echo "==> Creating the development containers (playbooks/dev_containers.yml)"
    ansible-playbook -i "$inventory" playbooks/dev_containers.yml
    echo "==> Deploying the platform: ansible-playbook site.yml -i $inventory"
    ansible-playbook -i "$inventory" site.yml | tee .cache/dev-deploy.log
    changed=$(sed 's/\x1b\[[0-9;]*m//g' .cache/dev-deploy.log \
      | awk '/PLAY RECAP/ {r=1} r && match($0, /changed=[0-9]+/) {s += substr($0, RSTART + 8, RLENGTH - 8)} END {print s + 0}')
    cat <<MSG

==> The development platform is up ($(( $(date +%s) - started ))s; $changed change(s) in this run).
    App        http://localhost:8080/comer/platano
    Dashboard  http://localhost:8080/dashboard/   (admin / dev-dashboard-3d7f1a9c)
    Health     http://localhost:8080/healthz
    Metrics    http://localhost:8080/metrics

    Try:   curl -i http://localhost:8080/comer/platano
           curl http://localhost:8080/jobs/<job_id from the answer>
    Hosts: kit-data1, kit-data2 (Redis + Sentinel), kit-app1 (Apache + app + Sentinel),
           kit-worker1 (workers); e.g. docker exec -it kit-worker1 journalctl -u fridge-worker@1 -f
    Stop:  make down
MSG
    ;;
  down)
    echo "==> Removing the development containers, network and volumes"
    ansible-playbook -i "$inventory" playbooks/dev_containers.yml -e kit_dev_state=absent
    ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
