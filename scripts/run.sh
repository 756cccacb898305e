#!/usr/bin/env bash
# `make run`: the platform on this machine with examples/hello deployed. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT=${NUBIS_PORT:-8070}
export NUBIS_DATA_DIR=${NUBIS_DATA_DIR:-$PWD/.nubis}
export NUBIS_URL=http://127.0.0.1:$PORT
log=$NUBIS_DATA_DIR/server.log
umask 077  # the data dir holds the database, the printed admin token and logs: owner-only
mkdir -p "$NUBIS_DATA_DIR"

# Anonymous access is allowed on loopback only (the server refuses it on any other address).
"$BIN/nubis" server --port "$PORT" --insecure-local >"$NUBIS_DATA_DIR/server.out" 2>"$log" &
server=$!
stop() {
  trap - INT TERM EXIT
  echo "stopping the platform (draining functions)..."
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}
trap stop INT TERM EXIT

for _ in $(seq 600); do
  grep -q "nubis server ready" "$NUBIS_DATA_DIR/server.out" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; echo "nubis server failed to start (log: $log)"; exit 1; }
  sleep 0.1
done
grep -q "nubis server ready" "$NUBIS_DATA_DIR/server.out" || { echo "nubis server did not get ready"; exit 1; }

"$BIN/nubis" deploy examples/hello
echo
echo "Nubis API:   $NUBIS_URL   (Nuclio dashboard API; OpenAPI at $NUBIS_URL/api/openapi.json)"
echo "Invoke:      NUBIS_URL=$NUBIS_URL $BIN/nubis invoke hello --path '/?name=you'"
gateway=$(sed -n 's/^gateway at \([^ ]*\).*/\1/p' "$NUBIS_DATA_DIR/server.out" | tail -1)
[ -n "$gateway" ] && echo "Gateway:     curl '$gateway/hello/?name=you'   (every function at /<name>)"
echo "Server log:  $log"
echo "Ctrl-C stops the server, the agent and every function."
wait "$server"
