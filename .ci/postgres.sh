# Sourced by .ci/run: a throwaway PostgreSQL server on 127.0.0.1 for the tests of distributed studies.
#   start_postgres  installs Debian's postgresql if absent, starts a server on a free port with a fresh
#                   data directory, creates the database crl_test and exports its URL as
#                   CRL_TEST_POSTGRES_URL; stop_postgres stops it and removes the data directory.
# Root cannot run postgres: as root, the server runs as the `postgres` user (created by the package).

postgres_bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
    if [ -z "$(postgres_bin)" ]; then
        echo "installing postgresql (Debian package)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi
    local bin port
    bin="$(postgres_bin)"
    PG_ROOT="$(mktemp -d)"
    chmod 755 "$PG_ROOT"
    [ "$(id -u)" = 0 ] && chown postgres "$PG_ROOT"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    as_postgres "$bin/initdb" -D "$PG_ROOT/data" -U postgres -A trust --no-sync >/dev/null
    as_postgres "$bin/pg_ctl" -D "$PG_ROOT/data" -l "$PG_ROOT/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_ROOT -c fsync=off -c max_connections=200" start >/dev/null
    as_postgres "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres crl_test
    export CRL_TEST_POSTGRES_URL="postgresql+psycopg2://postgres@127.0.0.1:$port/crl_test"
    echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (CRL_TEST_POSTGRES_URL)"
}

stop_postgres() {
    if [ -n "${PG_ROOT:-}" ] && [ -d "$PG_ROOT/data" ]; then
        as_postgres "$(postgres_bin)/pg_ctl" -D "$PG_ROOT/data" -m fast -w stop >/dev/null || true
        rm -rf "$PG_ROOT"
    fi
}
