# Shared by the test and demo scripts: dependencies, build, throwaway clusters.
# Source it; it defines functions only.

TC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PG_BINDIR="$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)"

tc_log() { printf '\n==> %s\n' "$*"; }

# Installs the Debian packages the build and the tests need, when missing.
tc_install_dependencies() {
  local packages=(g++ make cmake pkg-config postgresql-15 postgresql-server-dev-15
    nlohmann-json3-dev libabsl-dev libgtest-dev libgmock-dev
    libbenchmark-dev libkrb5-dev libipc-run-perl clang-14 libfuzzer-14-dev "$@")
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    tc_log "installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
      echo "need root to apt-get install ${missing[*]}" >&2
      return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  PG_BINDIR="$(pg_config --bindir)"
}

# Builds and installs the extension into the PostgreSQL pg_config names, with
# PGXS's defaults as a user would (DESIGN.md): on Debian's LLVM-enabled server
# that includes the JIT bitcode and its llvm-lto index.
tc_build_and_install() {
  tc_log "building and installing the extension (PGXS)"
  make -C "$TC_ROOT" -f Makefile.pgxs -j2 >/dev/null
  make -C "$TC_ROOT" -f Makefile.pgxs install >/dev/null
}

# Runs a command as the postgres OS user when we are root (initdb refuses root).
tc_as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

tc_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# tc_start_cluster DIR [extra config file]: initdb + start with the library
# preloaded; sets PGHOST, PGPORT, PGUSER, TC_DATA.
tc_start_cluster() {
  local dir="$1" extra_conf="${2:-}"
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$dir"; fi
  TC_DATA="$dir/data"
  tc_as_postgres "$PG_BINDIR/initdb" -D "$TC_DATA" -U postgres --auth=trust >"$dir/initdb.log" 2>&1
  PGPORT="$(tc_free_port)"
  {
    echo "port = $PGPORT"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    echo "shared_preload_libraries = 'traffic_control'"
    echo "max_connections = 60"
    echo "fsync = off"
    echo "log_min_messages = info"
    echo "logging_collector = off"
    if [ -n "$extra_conf" ]; then cat "$extra_conf"; fi
  } >>"$TC_DATA/postgresql.conf"
  tc_start_server "$TC_DATA" "$dir/server.log"
  export PGHOST="$dir" PGPORT PGUSER=postgres TC_DATA
}

# tc_start_server DATA LOG: pg_ctl start as the postgres OS user. As root, with
# CAP_SYS_NICE in its ambient capabilities (docs/configuration.md, cpu_priority:
# a backend may then restore the CPU priority a budget lowered).
tc_start_server() {
  local data="$1" log="$2"
  if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null 2>&1; then
    setpriv --reuid=postgres --regid=postgres --init-groups --inh-caps=+sys_nice \
      --ambient-caps=+sys_nice "$PG_BINDIR/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null
  else
    tc_as_postgres "$PG_BINDIR/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null
  fi
}

# tc_kill_pidfiles FILE...: stops the processes whose pid files exist (the
# backstop of a test that started helpers and was interrupted).
tc_kill_pidfiles() {
  local pidfile
  for pidfile in "$@"; do
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
}

tc_stop_cluster() {
  local dir="$1"
  if [ -f "$dir/data/postmaster.pid" ]; then
    tc_as_postgres "$PG_BINDIR/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
}
