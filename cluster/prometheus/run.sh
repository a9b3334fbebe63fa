#!/usr/bin/env bash
# Starts Debian's prometheus (apt-get install -y prometheus) on prometheus.yml, in the foreground.
#
#   PROM_PORT     where Prometheus listens (default 9090)
#   PROM_DATA     its data folder (default: a new temporary folder, removed on exit)
#   RAY_SD_FILE   Ray's service-discovery file (default /tmp/ray/prom_metrics_service_discovery.json,
#                 which Ray's head links to its session's copy; for ray.init(_temp_dir=T): T/...)
#   LOCAL_TARGET  host:port of observe.metrics_port (default 127.0.0.1:9400)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v prometheus >/dev/null || { echo "prometheus not found: apt-get install -y prometheus" >&2; exit 127; }

port="${PROM_PORT:-9090}"
sd_file="${RAY_SD_FILE:-/tmp/ray/prom_metrics_service_discovery.json}"
local_target="${LOCAL_TARGET:-127.0.0.1:9400}"
work="$(mktemp -d -t mmpretrain-prometheus-XXXXXX)"
data="${PROM_DATA:-$work/data}"
child=""
cleanup() {
    [ -n "$child" ] && kill "$child" 2>/dev/null && wait "$child" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

sed -e "s#/tmp/ray/prom_metrics_service_discovery.json \# RAY_SD_FILE#$sd_file#" \
    -e "s#127.0.0.1:9400 \# LOCAL_TARGET#$local_target#" \
    "$here/prometheus.yml" > "$work/prometheus.yml"

echo "prometheus on http://127.0.0.1:$port (config $work/prometheus.yml, data $data)"
# Not exec: the EXIT trap stops prometheus and removes the temporary folder.
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$data" \
    --web.listen-address="127.0.0.1:$port" --log.level=warn &
child=$!
wait "$child"
