#!/usr/bin/env bash
# Starts dist/keybrake from an empty temp dir (no node_modules beside it), checks
# /healthz, issues a key with curl exactly as the README shows, and stops it.
set -euo pipefail
bin="$(pwd)/dist/keybrake"
work=$(mktemp -d)
cp "$bin" "$work/keybrake"
cd "$work"
# Port 0: the OS picks a free one (no guessing, no race); the start line says which.
./keybrake serve --port 0 --host 127.0.0.1 >"$work/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
port=""
for _ in $(seq 1 100); do
  port=$(grep -oE 'listening on http://[^ ]+:[0-9]+' "$work/log" | grep -oE '[0-9]+$' || true)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "no start line"; cat "$work/log"; exit 1; }
curl -fsS "http://127.0.0.1:$port/healthz"
echo
token=$(grep -oE 'kbt_[A-Za-z0-9_-]+' "$work/log" | head -1)
[ -n "$token" ] || { echo "no first-start token printed"; cat "$work/log"; exit 1; }
[ -f keybrake-data/keybrake.db ] || { echo "no keybrake-data/keybrake.db"; exit 1; }
curl -fsS -X POST "http://127.0.0.1:$port/vault/keys" \
  -H "Authorization: Bearer $token" -H "Content-Type: application/json" \
  -d '{"vendor":"stripe","daily_usd_cap":500.0,"allowed_endpoints":["POST /v1/payment_intents"],"expires_in":"6h","agent_run_label":"airflow-billing/ci-smoke"}' \
  | grep -q '"vault_key":"vk_' || { echo "issuing a key failed"; exit 1; }
kill -TERM $pid
wait $pid || { echo "SIGTERM did not exit 0"; cat "$work/log"; exit 1; }
./keybrake version
echo "binary smoke: ok"
