#!/usr/bin/env bash
# Benchmarks sessionward against a plain nginx reverse proxy, both in front of
# the same tiny nginx backend, with wrk and keep-alive connections.
#
#   (a) the backend directly
#   (b) nginx proxy_pass to the backend (upstream keepalive 64, HTTP/1.1)
#   (c) sessionward (release build, in-memory store) with a live session
#       cookie on every request: every request loads a session and signs a JWT
#   (d) the same with the SQLite store (a file in the work directory)
#   (e) the same with the Redis store (a redis-server of its own, no persistence)
#   (w) sessionward with SQLite, every request writing a session: the
#       backend answers /touch with an update header, and wrk spreads the
#       requests over WRITE_SESSIONS sessions made beforehand (as many users
#       would), so req/s = session writes/s
#
# Prints req/s and p50/p99 latency per arm plus the ratios of every
# sessionward arm to nginx (x/b), and of redis to memory (e/c); writes the
# same table to bench/results-latest.txt. See bench/README.md.
#
# Settings (environment):
#   DURATION=10s     measured wrk run per arm and round
#   CONNECTIONS=64   wrk -c
#   THREADS=2        wrk -t
#   WARMUP=2s        wrk run before each measured run (0 to skip)
#   ROUNDS=1         >1: arms run interleaved a,b,c,...,a,b,c,...; medians are reported
#   ARMS="a b c d e w"  which arms to run, in this order
#   WRITE_SESSIONS=1000 sessions the write arm spreads its requests over
#   SESSIONWARD_BIN  use this binary instead of running `cargo build --release`
#   KEEP_WORKDIR=1   keep the temporary directory (configs, logs, wrk output)
set -euo pipefail
export LC_ALL=C

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-1}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$script_dir")
results_file=$script_dir/results-latest.txt
read -r -a arms <<<"${ARMS:-a b c d e w}"
READY_TIMEOUT=15

log() { printf '%s\n' "$*" >&2; }
die() {
    printf 'compare.sh: error: %s\n' "$*" >&2
    exit 1
}

# --- settings ---------------------------------------------------------------

[[ $DURATION =~ ^[0-9]+[smh]?$ && ! $DURATION =~ ^0+[smh]?$ ]] ||
    die "DURATION must be a wrk duration such as 10s, got '$DURATION'"
[[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must be a wrk duration such as 2s (or 0), got '$WARMUP'"
for var in CONNECTIONS THREADS ROUNDS; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer, got '${!var}'"
done
((CONNECTIONS >= THREADS)) || die "CONNECTIONS ($CONNECTIONS) must be at least THREADS ($THREADS)"
warmup_enabled=true
[[ $WARMUP =~ ^0+[smh]?$ ]] && warmup_enabled=false

# --- tools ------------------------------------------------------------------

find_nginx() {
    local p
    if p=$(command -v nginx 2>/dev/null); then
        printf '%s\n' "$p"
        return 0
    fi
    for p in /usr/sbin/nginx /usr/local/sbin/nginx /usr/local/nginx/sbin/nginx; do
        if [[ -x $p ]]; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 1
}

ensure_tools() {
    local missing=()
    find_nginx >/dev/null || missing+=(nginx-light)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    if [[ " ${arms[*]} " == *" e "* ]]; then
        command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    fi
    ((${#missing[@]} == 0)) && return 0

    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "compare.sh: missing tools; install them first, for example:"
        log "  sudo apt-get install -y ${missing[*]}"
        exit 1
    fi
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if apt-get install -y "${missing[@]}" >&2; then
        return 0
    fi
    apt-get update >&2 || die "apt-get update failed"
    if apt-get install -y "${missing[@]}" >&2; then
        return 0
    fi
    # Newer Debian releases dropped the nginx-light flavour.
    local retry=("${missing[@]/#nginx-light/nginx}")
    apt-get install -y "${retry[@]}" >&2 || die "apt-get install -y ${missing[*]} failed"
}

ensure_tools
nginx_bin=$(find_nginx) || die "nginx is still not on PATH"

# --- build ------------------------------------------------------------------

if [[ -n ${SESSIONWARD_BIN:-} ]]; then
    sw_bin=$SESSIONWARD_BIN
    log "using SESSIONWARD_BIN=$sw_bin (no build)"
else
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install Rust (https://rustup.rs) or set SESSIONWARD_BIN"
    log "building sessionward: cargo build --release"
    (cd "$root" && cargo build --release) >&2 || die "cargo build --release failed"
    target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir == /* ]] || target_dir=$root/$target_dir
    sw_bin=$target_dir/release/sessionward
fi
[[ -x $sw_bin ]] || die "sessionward binary not found at $sw_bin"

# --- processes and cleanup --------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/sessionward-bench.XXXXXX")
pids=()

# True while the process runs (a zombie child is not running).
alive() {
    local stat
    if [[ ! -d /proc/self ]]; then
        kill -0 "$1" 2>/dev/null
        return
    fi
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

stop_all() {
    local pid child deadline
    ((${#pids[@]} == 0)) && return 0
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
        while alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if alive "$pid"; then
            log "pid $pid did not stop on SIGTERM; killing it"
            # nginx workers outlive a SIGKILLed master: take them too, by id.
            if command -v pgrep >/dev/null 2>&1; then
                for child in $(pgrep -P "$pid" || true); do
                    kill -KILL "$child" 2>/dev/null || true
                done
            fi
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}

cleanup() {
    local status=$?
    trap - EXIT
    trap '' INT TERM
    stop_all
    if [[ -n ${KEEP_WORKDIR:-} ]]; then
        log "kept $work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Lets nginx workers (user nobody when started as root) traverse to their temp dirs.
chmod 711 "$work"

show_log() { # file
    [[ -s $1 ]] || return 0
    log "--- last lines of $1:"
    tail -n 20 "$1" >&2 || true
}

wait_ready() { # name url pid logfile
    local name=$1 url=$2 pid=$3 logfile=$4
    local deadline=$((SECONDS + READY_TIMEOUT))
    until curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; do
        if ! alive "$pid"; then
            show_log "$logfile"
            die "$name exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            show_log "$logfile"
            die "$name not ready at $url after ${READY_TIMEOUT}s"
        fi
        sleep 0.1
    done
}

# --- ports and configuration ------------------------------------------------

# Distinct free ports, held open together while they are picked.
ports=$(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
') || die "could not pick free ports"
read -r backend_port proxy_port sw_port sqlite_port redis_sw_port redis_port <<<"$ports"

# -e (nginx >= 1.19.5) keeps nginx off the system error log during startup.
nginx_help=$("$nginx_bin" -h 2>&1 || true)
nginx_has_e=false
[[ $nginx_help == *"-e filename"* ]] && nginx_has_e=true

write_nginx_conf() { # dir workers server-blocks
    local dir=$1
    mkdir -p "$dir"
    chmod 755 "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes $2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    # The default (1000) would make every arm reconnect every 1000 requests.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
$3
}
EOF
}

start_nginx() { # dir -> appends the master pid to pids
    local dir=$1 args
    args=(-p "$dir/" -c "$dir/nginx.conf")
    $nginx_has_e && args+=(-e "$dir/error.log")
    "$nginx_bin" "${args[@]}" >"$dir/stdout.log" 2>&1 &
    pids+=("$!")
}

backend_dir=$work/backend
write_nginx_conf "$backend_dir" 1 "$(
    cat <<EOF
    server {
        listen 127.0.0.1:$backend_port;
        location = /login {
            add_header x-session-update '{"user":"bench","role":"reader"}';
            return 200 "ok\n";
        }
        # Every request writes the session (the same data: a write all the same).
        location = /touch {
            add_header x-session-update '{"user":"bench"}';
            return 200 "ok\n";
        }
        # Echoes the token sessionward sent, for the check before measuring.
        location = /__bench/token {
            add_header x-bench-token \$http_x_session;
            return 200 "ok\n";
        }
        location / {
            return 200 "ok\n";
        }
    }
EOF
)"

proxy_dir=$work/proxy
write_nginx_conf "$proxy_dir" auto "$(
    cat <<EOF
    upstream bench_backend {
        server 127.0.0.1:$backend_port;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$proxy_port;
        location / {
            proxy_pass http://bench_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
)"

secret=$(python3 -c 'import secrets; print(secrets.token_hex(24))')

write_sw_config() { # name port store-yaml
    (
        umask 077
        cat >"$work/$1.yaml" <<EOF
listen: 127.0.0.1:$2
upstream: http://127.0.0.1:$backend_port
cookie:
  secure: false
store:
$3
signing:
  secret: $secret
shutdown_grace: 2
EOF
    )
}

uses() { [[ " ${arms[*]} " == *" $1 "* ]]; }

write_sw_config memory "$sw_port" "  kind: memory"
write_sw_config sqlite "$sqlite_port" "  kind: sqlite
  sqlite:
    path: $work/sessions.db"
write_sw_config redis "$redis_sw_port" "  kind: redis
  redis:
    url: redis://127.0.0.1:$redis_port/0"

# --- start ------------------------------------------------------------------

backend_url=http://127.0.0.1:$backend_port
proxy_url=http://127.0.0.1:$proxy_port
sw_url=http://127.0.0.1:$sw_port

start_nginx "$backend_dir"
backend_pid=${pids[-1]}
wait_ready "backend nginx" "$backend_url/" "$backend_pid" "$backend_dir/error.log"

start_nginx "$proxy_dir"
proxy_pid=${pids[-1]}
wait_ready "proxy nginx" "$proxy_url/" "$proxy_pid" "$proxy_dir/error.log"

if uses e; then
    redis_dir=$work/redis
    mkdir -p "$redis_dir"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$redis_dir" --logfile "$redis_dir/redis.log" >/dev/null 2>&1 &
    pids+=("$!")
    redis_pid=$!
    deadline=$((SECONDS + READY_TIMEOUT))
    until [[ $(redis-cli -p "$redis_port" ping 2>/dev/null) == PONG ]]; do
        alive "$redis_pid" || die "redis-server exited during startup"
        ((SECONDS < deadline)) || die "redis-server not ready after ${READY_TIMEOUT}s"
        sleep 0.1
    done
fi

declare -A sw_pid_of=() sw_url_of=() cookie_of=() sw_log_of=()

start_sessionward() { # arm name port
    local arm=$1 name=$2 url=http://127.0.0.1:$3 logfile=$work/$2.log response cookie
    RUST_LOG=warn "$sw_bin" run --config "$work/$name.yaml" >"$logfile" 2>&1 &
    pids+=("$!")
    sw_pid_of[$arm]=$!
    sw_url_of[$arm]=$url
    sw_log_of[$arm]=$logfile
    wait_ready "sessionward ($name)" "$url/" "${sw_pid_of[$arm]}" "$logfile"
    response=$(curl -sS -i --max-time 5 "$url/login" | tr -d '\r') || die "GET $url/login failed"
    cookie=$(awk 'tolower($0) ~ /^set-cookie:[ \t]*sessionid=/ {
        sub(/^[^=]*=/, ""); sub(/;.*/, ""); print; exit }' <<<"$response")
    if [[ -z $cookie ]]; then
        log "$response"
        show_log "$logfile"
        die "could not obtain a session cookie: GET /login through sessionward ($name) set no sessionid cookie"
    fi
    cookie_of[$arm]=$cookie
}

uses c && start_sessionward c memory "$sw_port"
uses d && start_sessionward d sqlite "$sqlite_port"
uses e && start_sessionward e redis "$redis_sw_port"
if uses w; then
    # The write arm shares the SQLite proxy when both run.
    if uses d; then
        sw_pid_of[w]=${sw_pid_of[d]} sw_url_of[w]=${sw_url_of[d]}
        sw_log_of[w]=${sw_log_of[d]}
    else
        start_sessionward w sqlite "$sqlite_port"
    fi
    # Many users, one session each: wrk picks one at random per request.
    write_script=$work/writes.lua
    python3 - "${sw_url_of[w]}" "${WRITE_SESSIONS:-1000}" "$write_script" <<'EOF' || die "could not create the write arm's sessions"
import http.client, sys, urllib.parse
url, n, out = urllib.parse.urlsplit(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
cookies = []
for _ in range(n):
    conn.request("GET", "/login")
    resp = conn.getresponse()
    resp.read()
    for name, value in resp.getheaders():
        if name.lower() == "set-cookie" and value.startswith("sessionid="):
            cookies.append(value.split(";", 1)[0].split("=", 1)[1])
if len(cookies) != n:
    sys.exit(f"got {len(cookies)} session cookies for {n} logins")
with open(out, "w") as f:
    f.write("local cookies = {\n")
    f.writelines(f'  "{c}",\n' for c in cookies)
    f.write("}\n")
    f.write("""
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  local c = cookies[math.random(#cookies)]
  return wrk.format("GET", "/touch", { ["Cookie"] = "sessionid=" .. c })
end
""")
EOF
    cookie_of[w]=
fi
log "backend $backend_url (pid $backend_pid), nginx proxy $proxy_url (pid $proxy_pid)"
for arm in c d e w; do
    if uses $arm; then
        log "sessionward arm $arm at ${sw_url_of[$arm]} (pid ${sw_pid_of[$arm]})"
    fi
done

# --- checks before measuring --------------------------------------------------

# The first sessionward arm's session is checked in depth; every arm's
# cookie was checked when it was obtained.
check_arm=
for arm in c d e; do
    if uses $arm; then
        check_arm=$arm
        break
    fi
done
[[ -n $check_arm ]] || die "ARMS needs one of the session arms c, d or e (the write arm w is checked through them)"
sw_url=${sw_url_of[$check_arm]}
sw_log=${sw_log_of[$check_arm]}
cookie_value=${cookie_of[$check_arm]}

check_headers=$work/check.headers
status=$(curl -sS -o /dev/null -D "$check_headers" -w '%{http_code}' --max-time 5 \
    -H "Cookie: sessionid=$cookie_value" "$sw_url/") || die "GET $sw_url/ with the session cookie failed"
[[ $status == 200 ]] || die "GET / through sessionward with the session cookie returned $status, not 200"
if grep -qi '^set-cookie:' "$check_headers"; then
    tr -d '\r' <"$check_headers" >&2
    die "GET / with an unmodified live session returned a Set-Cookie; the session is not being reused"
fi

# The backend echoes the token it received: check the signature and that it
# carries the stored session (not an anonymous one).
token=$(curl -sS -o /dev/null -D - --max-time 5 -H "Cookie: sessionid=$cookie_value" \
    "$sw_url/__bench/token" | tr -d '\r' | awk '!found && tolower($1) == "x-bench-token:" { print $2; found = 1 }') ||
    die "GET /__bench/token through sessionward failed"
[[ -n $token ]] || die "the backend received no x-session token from sessionward"
BENCH_SECRET=$secret python3 - "$token" <<'EOF' || die "the token the backend received is not a signed live session"
import base64, hashlib, hmac, json, os, sys

def b64(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

head, payload, sig = sys.argv[1].split(".")
mac = hmac.new(os.environ["BENCH_SECRET"].encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
if not hmac.compare_digest(mac, b64(sig)):
    sys.exit("token: bad signature")
claims = json.loads(b64(payload))
if claims.get("new") is not False or not claims.get("sid"):
    sys.exit(f"token: not a live session: new={claims.get('new')!r} sid={claims.get('sid')!r}")
if claims.get("data") != {"user": "bench", "role": "reader"}:
    sys.exit(f"token: unexpected session data {claims.get('data')!r}")
print(f"checked: status 200 and no Set-Cookie on /; backend got a valid HS256 token for sid {claims['sid']}", file=sys.stderr)
EOF

for url in "$backend_url/" "$proxy_url/"; do
    status=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$url") || die "GET $url failed"
    [[ $status == 200 ]] || die "GET $url returned $status, not 200"
done

# --- measuring --------------------------------------------------------------

arm_label() {
    case $1 in
    a) printf 'a backend direct' ;;
    b) printf 'b nginx proxy_pass' ;;
    c) printf 'c sessionward (memory, session)' ;;
    d) printf 'd sessionward (sqlite, session)' ;;
    e) printf 'e sessionward (redis, session)' ;;
    w) printf 'w sessionward (sqlite, writes)' ;;
    *) die "unknown arm $1" ;;
    esac
}

arm_url() {
    case $1 in
    a) printf '%s/' "$backend_url" ;;
    b) printf '%s/' "$proxy_url" ;;
    c | d | e) printf '%s/' "${sw_url_of[$1]}" ;;
    w) printf '%s/touch' "${sw_url_of[$1]}" ;;
    *) die "unknown arm $1" ;;
    esac
}

notes=()
declare -A failed=()
results=$work/results.txt
: >"$results"

run_wrk() { # arm duration outfile
    local args=(--latency -t "$THREADS" -c "$CONNECTIONS" -d "$2")
    if [[ -n ${cookie_of[$1]:-} ]]; then
        args+=(-H "Cookie: sessionid=${cookie_of[$1]}")
    fi
    if [[ $1 == w ]]; then
        args+=(-s "$write_script")
    fi
    # Waited for in the background, so Ctrl-C interrupts `wait` at once and
    # the cleanup stops wrk with the servers.
    wrk "${args[@]}" "$(arm_url "$1")" >"$3" 2>&1 &
    local wrk_pid=$! status=0
    pids+=("$wrk_pid")
    wait "$wrk_pid" || status=$?
    unset 'pids[-1]'
    return "$status"
}

# Reports wrk's error lines; non-2xx responses fail the arm. Returns 1 on failure.
check_wrk_output() { # arm what outfile
    local arm=$1 what=$2 out=$3 line ok=0
    while IFS= read -r line; do
        line=${line#"${line%%[![:space:]]*}"}
        case $line in
        Non-2xx*" 0") ;;
        Non-2xx*)
            log "  FAILED: $(arm_label "$arm") $what: $line"
            notes+=("FAILED: $(arm_label "$arm") $what: $line")
            ok=1
            ;;
        "Socket errors"*)
            log "  warning: $(arm_label "$arm") $what: $line"
            notes+=("warning: $(arm_label "$arm") $what: $line")
            ;;
        *) ;;
        esac
    done <"$out"
    return "$ok"
}

# Prints "req/s p50_ms p99_ms" from wrk --latency output.
parse_wrk() { # outfile
    awk '
    function ms(v,   n, u) {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000
        if (u == "ms") return n
        if (u == "s") return n * 1000
        if (u == "m") return n * 60000
        return -1
    }
    $1 == "Requests/sec:" { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    END {
        if (rps == "" || p50 == "" || p99 == "" || p50 < 0 || p99 < 0) exit 1
        printf "%s %.4f %.4f\n", rps, p50, p99
    }' "$1"
}

all_alive() {
    local pid
    for pid in "$backend_pid" "$proxy_pid" "${sw_pid_of[@]}"; do
        if ! alive "$pid"; then
            for f in "${sw_log_of[@]}"; do show_log "$f"; done
            show_log "$backend_dir/error.log"
            show_log "$proxy_dir/error.log"
            die "a server under test (pid $pid) exited during the benchmark"
        fi
    done
}

measure() { # arm round
    local arm=$1 round=$2 out parsed what prefix
    prefix="[round $round/$ROUNDS] $(arm_label "$arm")"
    if $warmup_enabled; then
        out=$work/warmup-$arm-$round.txt
        what="round $round warmup"
        if ! run_wrk "$arm" "$WARMUP" "$out"; then
            cat "$out" >&2
            notes+=("FAILED: $(arm_label "$arm") $what: wrk failed")
            failed[$arm]=1
            return 0
        fi
        check_wrk_output "$arm" "$what" "$out" || failed[$arm]=1
    fi
    out=$work/wrk-$arm-$round.txt
    what="round $round"
    if ! run_wrk "$arm" "$DURATION" "$out"; then
        cat "$out" >&2
        notes+=("FAILED: $(arm_label "$arm") $what: wrk failed")
        failed[$arm]=1
        return 0
    fi
    check_wrk_output "$arm" "$what" "$out" || failed[$arm]=1
    if ! parsed=$(parse_wrk "$out"); then
        cat "$out" >&2
        notes+=("FAILED: $(arm_label "$arm") $what: could not parse wrk output")
        failed[$arm]=1
        return 0
    fi
    printf '%s %s %s\n' "$arm" "$round" "$parsed" >>"$results"
    read -r rps p50 p99 <<<"$parsed"
    log "$(printf '%s: %.0f req/s, p50 %.2f ms, p99 %.2f ms' "$prefix" "$rps" "$p50" "$p99")"
}

warm_text=$WARMUP
$warmup_enabled || warm_text=none
medians_text=
((ROUNDS > 1)) && medians_text=', medians'
log "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, warmup $warm_text, $ROUNDS round(s), arms interleaved"
for ((round = 1; round <= ROUNDS; round++)); do
    for arm in "${arms[@]}"; do
        measure "$arm" "$round"
        all_alive
    done
done

# --- report -----------------------------------------------------------------

median() { # arm column -> median over rounds
    awk -v arm="$1" -v col="$2" '$1 == arm { print $col }' "$results" | sort -g |
        awk '{ v[NR] = $1 } END {
            if (NR == 0) exit 1
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

declare -A rps_of=()
report=$work/report.txt
{
    printf '# wrk -t%s -c%s -d%s --latency, warmup %s, %s round(s)%s; %s CPUs; %s; %s; %s\n' \
        "$THREADS" "$CONNECTIONS" "$DURATION" "$warm_text" "$ROUNDS" \
        "$medians_text" "$(nproc 2>/dev/null || echo '?')" \
        "$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //')" \
        "$(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }')" "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf '%-33s %10s %9s %9s\n' arm req/s 'p50 ms' 'p99 ms'
    for arm in "${arms[@]}"; do
        if [[ -n ${failed[$arm]:-} ]] || ! grep -q "^$arm " "$results"; then
            printf '%-33s %10s %9s %9s\n' "$(arm_label "$arm")" FAILED - -
            continue
        fi
        rps_of[$arm]=$(median "$arm" 3)
        printf '%-33s %10.0f %9.2f %9.2f\n' "$(arm_label "$arm")" \
            "${rps_of[$arm]}" "$(median "$arm" 4)" "$(median "$arm" 5)"
    done
    ratio() { # numerator denominator
        if [[ -n ${rps_of[$1]:-} && -n ${rps_of[$2]:-} ]]; then
            awk -v n="${rps_of[$1]}" -v d="${rps_of[$2]}" 'BEGIN { printf "%.2f", (d > 0 ? n / d : 0) }'
        else
            printf 'n/a'
        fi
    }
    line=
    for arm in c d e; do
        if uses $arm; then line+="$arm/b = $(ratio $arm b)   "; fi
    done
    if uses c; then line+="c/a = $(ratio c a)   "; fi
    if uses e && uses c; then line+="e/c = $(ratio e c) (redis/memory, target >= 0.80)"; fi
    printf '%s\n' "$line"
    if [[ -n ${rps_of[w]:-} ]]; then
        printf 'sqlite session writes/s = %.0f (target >= 10000)\n' "${rps_of[w]}"
    fi
    if ((ROUNDS > 1)); then
        printf '# req/s min-max over %s rounds:' "$ROUNDS"
        for arm in "${arms[@]}"; do
            awk -v arm="$arm" '$1 == arm { v = $3 + 0; if (n++ == 0 || v < lo) lo = v; if (v > hi) hi = v }
                END { if (n) printf "  %s %.0f-%.0f", arm, lo, hi }' "$results"
        done
        printf '\n'
    fi
    for note in "${notes[@]}"; do
        printf '# %s\n' "$note"
    done
} >"$report"

# Warnings or errors sessionward logged while being measured.
for f in $(printf '%s\n' "${sw_log_of[@]}" | sort -u); do
    if [[ -s $f ]]; then
        log "$(basename "$f"): $(wc -l <"$f") line(s) at warn level or above; first ones:"
        head -n 5 "$f" >&2
        printf '# %s: %s line(s) at warn or above during the run\n' "$(basename "$f")" "$(wc -l <"$f")" >>"$report"
    fi
done

# Memory per stored session in the memory store (target: under 400 bytes
# beyond a 100-byte payload at 1,000,000 sessions). Needs cargo for the
# example; MEMORY_SESSIONS=0 skips it.
memory_sessions=${MEMORY_SESSIONS:-1000000}
if [[ $memory_sessions != 0 ]] && command -v cargo >/dev/null 2>&1; then
    log "measuring memory per session at $memory_sessions sessions"
    if mem_line=$(cd "$root" && cargo run --quiet --release --example memory_per_session -- "$memory_sessions" 2>/dev/null); then
        printf 'memory store: %s (target overhead < 400 B)\n' "$mem_line" >>"$report"
    else
        printf '# memory per session: the example failed\n' >>"$report"
    fi
fi

cat "$report"
cp "$report" "$results_file"
log "written to $results_file"

if ((${#failed[@]} > 0)); then
    die "failed arm(s): ${!failed[*]}"
fi
