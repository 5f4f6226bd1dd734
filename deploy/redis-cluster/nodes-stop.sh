#!/usr/bin/env bash
# Stops the headcount nodes that nodes-start.sh started from DIR: SIGTERM
# (a graceful shutdown: each leaves the cluster at once), then SIGKILL after
# 10 s. Only the pids of DIR/headcount-*.pid that really are headcount.
set -uo pipefail

DIR=${1:?usage: $0 DIR}
[ -d "$DIR" ] || exit 0
. "$(cd "$(dirname "$0")" && pwd)/stop-pidfiles.sh"
stop_pidfiles headcount 100 "$DIR"/headcount-*.pid
echo "stopped $STOPPED headcount node(s) from $DIR"
