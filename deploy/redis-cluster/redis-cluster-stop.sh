#!/usr/bin/env bash
# Stops the Redis Cluster that redis-cluster-start.sh started from DIR.
#
# Usage: redis-cluster-stop.sh DIR [--purge]
#   Stops only the processes of the pid files DIR/*/redis.pid that really are
#   redis-server (never by name, never another Redis on the machine).
#   --purge also deletes DIR.
# Idempotent: a missing DIR, missing pid files or dead servers are fine.
set -uo pipefail

DIR=${1:?usage: $0 DIR [--purge]}
PURGE=${2:-}
[ -d "$DIR" ] || exit 0

. "$(cd "$(dirname "$0")" && pwd)/stop-pidfiles.sh"
# SIGTERM: the servers save nothing.
stop_pidfiles redis-server 50 "$DIR"/*/redis.pid
if [ "$PURGE" = "--purge" ]; then
  rm -rf "${DIR:?}"
fi
echo "stopped $STOPPED redis server(s) from $DIR"
