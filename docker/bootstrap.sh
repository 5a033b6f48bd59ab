#!/bin/sh
# One-shot setup for the compose demo: a signing key, an admin API token and an
# enrollment token, written to the shared /keys volume. Idempotent.
set -eu
cd /keys
[ -f release.key ] || fleetup-agent keygen --out release.key
if [ ! -s admin.token ]; then
  fleetup-server token create --role admin --name compose-admin > admin.token
fi
until curl -fsS "${FLEETUP_SERVER:-http://server:8080}/healthz" >/dev/null; do sleep 1; done
if [ ! -s enroll.token ]; then
  curl -fsS -X POST -H "Authorization: Bearer $(cat admin.token)" -H 'content-type: application/json' \
    -d '{"name":"compose","labels":{"env":"compose"}}' \
    "${FLEETUP_SERVER:-http://server:8080}/api/v1/enrollment-tokens" \
    | sed -n 's/.*"secret":"\([^"]*\)".*/\1/p' > enroll.token
fi
echo "admin token in /keys/admin.token; agents enroll with /keys/enroll.token"
