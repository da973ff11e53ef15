#!/usr/bin/env bash
# Start or stop nginx + Nchan for the sluice load harness.
#
#   run-nchan.sh PREFIX_DIR PORT WORKERS   render nginx.conf.template into PREFIX_DIR/nginx.conf, start
#                                          nginx in the foreground as a background job, write the
#                                          master's PID to PREFIX_DIR/nginx.pid.master, wait until
#                                          127.0.0.1:PORT answers, exit 0
#   run-nchan.sh stop PREFIX_DIR           TERM that master (by the saved PID) and wait for it to exit
#
# Needs the Debian packages nginx and libnginx-mod-nchan. Never touches the system nginx service.
# Environment: NCHAN_START_TIMEOUT (seconds, default 10), NCHAN_STOP_TIMEOUT (seconds, default 10).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
template="$here/nginx.conf.template"
module=/usr/lib/nginx/modules/ngx_nchan_module.so

die() { echo "run-nchan.sh: $*" >&2; exit 1; }
usage() { die "usage: run-nchan.sh PREFIX_DIR PORT WORKERS | run-nchan.sh stop PREFIX_DIR"; }

alive() { kill -0 "$1" 2>/dev/null; }

port_answers() {
    # bash's /dev/tcp: succeeds once something accepts on 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

stop() {
    local prefix="$1" pidfile pid deadline workers
    pidfile="$prefix/nginx.pid.master"
    if [[ ! -f "$pidfile" ]]; then   # idempotent, so it can sit in a cleanup trap
        echo "run-nchan.sh: no $pidfile: nothing to stop" >&2
        return 0
    fi
    pid="$(cat "$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || die "bad PID in $pidfile: $pid"
    if alive "$pid"; then
        # Refuse to signal a recycled PID that is no longer our nginx.
        grep -q nginx "/proc/$pid/cmdline" 2>/dev/null || die "PID $pid is not nginx; not signalling it"
        kill -TERM "$pid"   # fast shutdown: the master stops its workers, then exits
        deadline=$((SECONDS + ${NCHAN_STOP_TIMEOUT:-10}))
        while alive "$pid"; do
            if ((SECONDS >= deadline)); then
                echo "run-nchan.sh: master $pid still up after TERM; sending KILL to it and its workers" >&2
                # list the workers first: once the master is gone they are re-parented
                workers="$(ps -o pid= --ppid "$pid" 2>/dev/null || true)"
                kill -KILL "$pid" 2>/dev/null || true
                if [[ -n "$workers" ]]; then kill -KILL $workers 2>/dev/null || true; fi
                break
            fi
            sleep 0.05
        done
    fi
    rm -f "$pidfile"
}

start() {
    local prefix="$1" port="$2" workers="$3" pid deadline
    [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number: $port"
    [[ "$workers" =~ ^([0-9]+|auto)$ ]] || die "WORKERS must be a number or auto: $workers"
    command -v nginx >/dev/null || die "nginx not installed (apt-get install nginx libnginx-mod-nchan)"
    [[ -f "$module" ]] || die "$module missing (apt-get install libnginx-mod-nchan)"
    [[ -f "$template" ]] || die "$template missing"

    mkdir -p "$prefix"
    prefix="$(cd "$prefix" && pwd)"
    if [[ -f "$prefix/nginx.pid.master" ]] && alive "$(cat "$prefix/nginx.pid.master")"; then
        die "an nginx from $prefix is already running (PID $(cat "$prefix/nginx.pid.master"))"
    fi
    if port_answers "$port"; then
        die "127.0.0.1:$port is already in use"
    fi

    # nginx creates only the last component of each temp path: make the parents.
    mkdir -p "$prefix/logs" "$prefix/temp"
    sed -e "s/@WORKERS@/$workers/g" -e "s/@PORT@/$port/g" "$template" > "$prefix/nginx.conf"
    # nginx -t prints [info] lines about shared memory on stderr even with -q: keep them in a log.
    if ! nginx -t -q -p "$prefix/" -c "$prefix/nginx.conf" >"$prefix/logs/configtest.log" 2>&1; then
        cat "$prefix/logs/configtest.log" >&2
        die "nginx -t rejected $prefix/nginx.conf"
    fi

    # Raise the soft fd limit for the master too (workers get worker_rlimit_nofile).
    ulimit -n 20000 2>/dev/null || true
    nginx -p "$prefix/" -c "$prefix/nginx.conf" </dev/null >>"$prefix/logs/stdout.log" 2>&1 &
    pid=$!
    echo "$pid" > "$prefix/nginx.pid.master"

    deadline=$((SECONDS + ${NCHAN_START_TIMEOUT:-10}))
    until port_answers "$port"; do
        if ! alive "$pid"; then
            rm -f "$prefix/nginx.pid.master"
            tail -n 20 "$prefix/logs/error.log" "$prefix/logs/stdout.log" >&2 2>/dev/null || true
            die "nginx exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            stop "$prefix"
            die "127.0.0.1:$port did not answer within ${NCHAN_START_TIMEOUT:-10}s"
        fi
        sleep 0.05
    done
    echo "nginx+nchan master PID $pid listening on 127.0.0.1:$port ($workers worker(s)), prefix $prefix"
}

case "${1:-}" in
    stop) [[ $# -eq 2 ]] || usage; stop "$2" ;;
    ""|-h|--help) usage ;;
    *) [[ $# -eq 3 ]] || usage; start "$1" "$2" "$3" ;;
esac
