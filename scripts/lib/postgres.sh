# A throwaway PostgreSQL cluster for tests and benchmarks: sourced, not run.
#
#   pg_start [durable]   initdb in a temp dir, start on a free loopback port,
#                        export TESSERA_PG_URL (the postgres database as superuser)
#   pg_stop              stop it and remove the directory
#
# Without "durable" the cluster runs with fsync off: fine for tests, wrong for
# benchmarks. As root, the cluster runs as the postgres user (initdb refuses root).

pg_bin() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return
    fi
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$found" ]; then
        echo "PostgreSQL is not installed; installing it" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        found=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    echo "$found"
}

pg_free_port() {
    local port
    for port in $(seq "${1:-55432}" 55532); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free port for PostgreSQL" >&2
    return 1
}

pg_start() {
    local bin port as_pg=()
    bin=$(pg_bin)
    PG_DIR=$(mktemp -d /tmp/tessera-pg.XXXXXX)
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$PG_DIR"
        as_pg=(runuser -u postgres --)
    fi
    port=$(pg_free_port)
    local settings="-c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=256MB"
    if [ "${1:-}" != durable ]; then
        settings="$settings -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    fi
    "${as_pg[@]}" "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-locale >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; return 1; }
    # A port nobody listens on may still be taken (a closed connection of
    # an earlier cluster in TIME_WAIT): then the next one is tried.
    local tries
    for tries in 1 2 3 4 5; do
        if "${as_pg[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
            -o "-p $port -k $PG_DIR $settings" start >/dev/null 2>&1; then
            break
        fi
        if [ "$tries" = 5 ] || ! grep -q "Address already in use" "$PG_DIR/server.log"; then
            cat "$PG_DIR/server.log" >&2
            return 1
        fi
        : >"$PG_DIR/server.log"
        port=$(pg_free_port $((port + 1))) || return 1
    done
    PG_CTL=("${as_pg[@]}" "$bin/pg_ctl")
    export TESSERA_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
    echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on port $port ($PG_DIR)" >&2
}

pg_stop() {
    if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR" ]; then
        "${PG_CTL[@]}" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
}
