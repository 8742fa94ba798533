#!/usr/bin/env bash
# Start a throw-away PostgreSQL for the service test and print the URL to export.
# Best effort: prints nothing (and the PostgreSQL test skips) where PostgreSQL cannot be had.
set -u
log=/tmp/bitalloc-ci-postgres.log
{
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || exit 0
    timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq postgresql
  fi
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$bin/initdb" ] || exit 0
  dir=$(mktemp -d /tmp/bitalloc-pg.XXXXXX)
  port=$((50000 + RANDOM % 10000))
  run=(bash -c)
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; run=(su postgres -s /bin/bash -c); fi
  "${run[@]}" "$bin/initdb -D $dir/data -A trust -U postgres" &&
    "${run[@]}" "$bin/pg_ctl -D $dir/data -w -l $dir/server.log -o '-k $dir -p $port -c listen_addresses=127.0.0.1' start" &&
    "${run[@]}" "$bin/createdb -h 127.0.0.1 -p $port -U postgres bitalloc_test" &&
    echo "postgresql://postgres@127.0.0.1:$port/bitalloc_test" >"$dir/url"
} >"$log" 2>&1
cat "$dir/url" 2>/dev/null
