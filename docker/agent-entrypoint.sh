#!/bin/sh
# Starts the example service at 1.0 and the agent that upgrades it (compose demo).
set -eu
port="${DEMO_PORT:-8081}"
until [ -s /keys/enroll.token ]; do echo "waiting for the enrollment token"; sleep 1; done
if [ ! -s /opt/demo/run/demo.pid ] || ! kill -0 "$(cat /opt/demo/run/demo.pid)" 2>/dev/null; then
  fleetup-demo-service --listen "127.0.0.1:$port" --root /opt/demo >/var/log/demo-service.log 2>&1 &
  echo $! > /opt/demo/run/demo.pid
fi
exec fleetup-agent run \
  --server "${FLEETUP_SERVER:-http://server:8080}" \
  --enroll-token "$(cat /keys/enroll.token)" \
  --state-dir /var/lib/fleetup-agent \
  --root /opt/demo \
  --trust /keys/release.key.pub \
  --hostname "${HOSTNAME}" \
  --label env=compose \
  --services-backend exec \
  --var "port=$port" \
  --var demo_service_bin=/usr/local/bin/fleetup-demo-service \
  --var "crl_base=${CRL_BASE:-http://127.0.0.1:9}"
