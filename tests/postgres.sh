#!/usr/bin/env bash
# A throw-away PostgreSQL cluster on loopback for the shared-metadata tests (Debian's postgresql).
#   tests/postgres.sh start DIR PORT [CERT KEY [HBA [CLIENT_CA]]]
#                                      initdb in DIR (once), start on 127.0.0.1:PORT, print the URL;
#                                      with CERT and KEY (PEM files), TLS on (ssl=on) with that pair;
#                                      with HBA, that file as pg_hba.conf; with CLIENT_CA, client
#                                      certificates from that CA are checked (pg_hba's `cert`)
#   tests/postgres.sh stop DIR         stop it (fast shutdown)
#   tests/postgres.sh run CMD...       start a cluster in a temp dir, run CMD with
#                                      BINARYREPO_TEST_POSTGRES_URL set, stop and remove it
# initdb refuses to run as root: as root, the cluster runs as the `postgres` user the package creates,
# so DIR's parents must be reachable by that user.
set -euo pipefail
BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
if [ ! -x "$BIN/initdb" ]; then
  echo "tests/postgres.sh: no PostgreSQL server (tests/install-deps.sh installs it)" >&2
  # `run` still runs the command: the tests that need the server say they were skipped
  [ "${1:-}" = run ] && { shift; exec "$@"; }
  exit 1
fi
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# a file the server reads, owned by the cluster's owner: the server refuses a key others can read
install_owned() {
  if [ "$(id -u)" = 0 ]; then install -o postgres -g postgres -m "$3" "$1" "$2"; else install -m "$3" "$1" "$2"; fi
}

start() {
  local dir=$1 port=$2 cert=${3:-} key=${4:-} hba=${5:-} client_ca=${6:-} ssl=()
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  if [ ! -f "$dir/PG_VERSION" ]; then
    as_owner "$BIN/initdb" -D "$dir" -U binaryrepo --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  if [ -n "$cert" ]; then
    install_owned "$cert" "$dir/server.crt" 644
    install_owned "$key" "$dir/server.key" 600
    ssl=(-c ssl=on)
  fi
  if [ -n "$hba" ]; then install_owned "$hba" "$dir/pg_hba.conf" 600; fi
  if [ -n "$client_ca" ]; then
    install_owned "$client_ca" "$dir/client-ca.crt" 644
    ssl+=(-c ssl_ca_file=client-ca.crt)
  fi
  # fsync off: a test cluster is thrown away, and syncs would dominate its time.
  as_owner "$BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 ${ssl[*]:-}" \
    start >/dev/null
  as_owner "$BIN/psql" -h 127.0.0.1 -p "$port" -U binaryrepo -d postgres -qAtc \
    "SELECT 1 FROM pg_database WHERE datname='binaryrepo'" | grep -q 1 \
    || as_owner "$BIN/createdb" -h 127.0.0.1 -p "$port" -U binaryrepo binaryrepo
  echo "postgresql://binaryrepo@127.0.0.1:$port/binaryrepo"
}

stop() { as_owner "$BIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1 || true; }

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop "$2" ;;
  run)
    shift
    dir=$(mktemp -d /tmp/binaryrepo-pg.XXXXXX)
    chmod 755 "$dir"  # the cluster's owner must reach its data directory inside
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    trap 'stop "$dir"; rm -rf "$dir"' EXIT
    url=$(start "$dir/data" "$port")
    BINARYREPO_TEST_POSTGRES_URL=$url "$@"
    ;;
  *) echo "usage: $0 start DIR PORT [CERT KEY [HBA [CLIENT_CA]]] | stop DIR | run CMD..." >&2; exit 2 ;;
esac
