# Sourced by the bench scripts (bench.sh, bench-floor.sh, bench-cluster.sh,
# bench-summary.sh): what they share, so that a node is started, measured
# and summarised the same way in each. The functions read OUT (where the
# JSON reports go) and, for `bench` and `stop`, BIN, PORT and PID.

# cargo's release build of headcount, wherever CARGO_TARGET_DIR or a config
# puts the target directory.
release_bin() {
  local dir
  dir=$(cargo metadata --format-version 1 --no-deps |
    grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4) || return
  echo "$dir/release/headcount"
}

# The per-socket limits (SPEC §8.4) raised out of the way, so that the
# scenarios measure what they did before the limits existed.
NO_LIMITS=(--max-messages-per-second 1000000 --max-messages-burst 1000000
  --max-joins-per-second 1000000 --max-joins-burst 1000000)

# Stops the node started last (PID).
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; }

bench() { # bench NAME ARGS... → OUT/NAME.json, against the node on PORT
  local name=$1; shift
  "$BIN" bench "$@" --url 127.0.0.1:$PORT --json >"$OUT/$name.json"
  echo "$name: done" >&2
}

# med GLOB JQ-EXPR → one line: the median over the runs OUT/GLOB.json, and
# the runs' values; printed with MED_FORMAT (GLOB, EXPR, median, values).
med() {
  local vals n m
  vals=$(for f in $OUT/$1.json; do jq -r "$2" "$f"; done | sort -g | tr '\n' ' ')
  n=$(echo "$vals" | wc -w)
  m=$(echo "$vals" | tr ' ' '\n' | grep -v '^$' | sed -n "$(((n + 1) / 2))p")
  # shellcheck disable=SC2059 # the format is the caller's
  printf "${MED_FORMAT:-%-34s %-28s median %s   runs: %s\n}" "$1" "$2" "$m" "$vals"
}
