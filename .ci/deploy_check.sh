#!/usr/bin/env bash
# Checks deploy/ as far as a machine without Docker or a cluster can:
#
#   1. every YAML file under deploy/ parses (multi-document files included);
#   2. Kubernetes: the manifests validate against the Kubernetes JSON schemas
#      (strict, offline: kubernetes-validate), `kubectl kustomize` renders them
#      when kubectl is there, and a small check holds the essentials: kinds and
#      apiVersions, probes on the admin port, runAsNonRoot, resources.requests,
#      the secret from a Secret, the Service not exposing the admin port, the
#      PodDisruptionBudget selecting the pods, the demo app's copy up to date;
#   3. docker-compose.yml validates against the compose spec (check-jsonschema's
#      bundled schema) and wires the secret from .env; the Dockerfile keeps its
#      promises (musl build stage, distroless/scratch, non-root, no HEALTHCHECK);
#   4. the static binary the image would hold builds (deploy/build-static.sh),
#      is static and fits the image budget;
#   5. `sessionward check` accepts every sessionward config under deploy/;
#   6. that binary, started with the Kubernetes config (ports moved to free
#      local ones, Redis local), answers on its admin port and carries a
#      session through the demo app: visit 1, visit 2, login, logout.
#
#   bash .ci/deploy_check.sh     (from anywhere; prints PASS or FAIL last)
#
# The release build is the slow part: ~2 min after a change to sessionward's
# own code, ~6 min cold on 2 cores. Its target dir is kept outside the clone
# (SESSIONWARD_DEPLOY_TARGET_DIR, default ~/.cache/sessionward/deploy-target)
# so fresh CI clones on the same machine reuse the dependencies.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TERM_COLOR=never

T0=$(date +%s)
TS=$T0
step() {
    local now
    now=$(date +%s)
    printf '\n==> deploy_check [%3ds, previous step %ds] %s\n' "$((now - T0))" "$((now - TS))" "$*"
    TS=$now
}
fail() {
    echo "FAIL: deploy_check: $*" >&2
    echo "FAIL: deploy_check"
    exit 1
}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
step "python tools (PyYAML, kubernetes-validate, check-jsonschema)"
need=()
python3 -c 'import yaml' 2>/dev/null || need+=(pyyaml)
python3 -c 'import kubernetes_validate' 2>/dev/null || need+=(kubernetes-validate)
python3 -c 'import check_jsonschema' 2>/dev/null || need+=(check-jsonschema)
if [[ ${#need[@]} -gt 0 ]]; then
    echo "installing ${need[*]}"
    python3 -m pip install --quiet "${need[@]}" || fail "cannot pip install ${need[*]}"
fi
python3 -c 'import yaml; print("PyYAML", yaml.__version__)'

# ---------------------------------------------------------------------------
step "every YAML file under deploy/ parses"
python3 - <<'PY' || fail "a YAML file does not parse"
import pathlib, sys, yaml
files = sorted(p for p in pathlib.Path("deploy").rglob("*") if p.suffix in (".yml", ".yaml"))
assert files, "no YAML under deploy/"
bad = 0
for p in files:
    try:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        print(f"  ok  {p} ({len(docs)} document{'s' if len(docs) != 1 else ''})")
    except yaml.YAMLError as e:
        print(f"  BAD {p}: {e}", file=sys.stderr)
        bad += 1
sys.exit(bad)
PY

# ---------------------------------------------------------------------------
step "kubernetes: render and schema-validate"
K8S=deploy/kubernetes
RENDERED=$WORK/rendered.yaml
if command -v kubectl >/dev/null 2>&1; then
    # Offline: `kubectl kustomize` only reads files (no cluster is contacted).
    kubectl kustomize "$K8S" >"$RENDERED" || fail "kubectl kustomize $K8S failed"
    echo "kubectl kustomize: $(grep -c '^kind:' "$RENDERED") objects"
else
    echo "NOTE: no kubectl here; the check below renders the kustomization itself"
    : >"$RENDERED"
fi
# Schema validation (strict: unknown fields are errors), against the oldest
# Kubernetes the manifests claim (1.27) and the newest the package knows.
schema_inputs=("$K8S/secret.example.yaml")
while IFS= read -r f; do schema_inputs+=("$K8S/$f"); done < <(
    python3 -c 'import yaml,sys; print("\n".join(yaml.safe_load(open(sys.argv[1]))["resources"]))' "$K8S/kustomization.yaml"
)
[[ -s "$RENDERED" ]] && schema_inputs+=("$RENDERED")
for v in 1.27 ""; do
    kubernetes-validate --strict --quiet ${v:+-k "$v"} "${schema_inputs[@]}" ||
        fail "kubernetes-validate ${v:-(latest)} rejected the manifests"
    echo "kubernetes-validate --strict ${v:-(latest schema)}: ok (${#schema_inputs[@]} files)"
done

# ---------------------------------------------------------------------------
step "kubernetes: the essentials"
python3 - "$K8S" "$RENDERED" <<'PY' || fail "kubernetes manifests: see above"
import pathlib, sys, yaml

k8s, rendered = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)

kust = yaml.safe_load((k8s / "kustomization.yaml").read_text())
need(kust.get("kind") == "Kustomization", "kustomization.yaml: kind is not Kustomization")
objs = []
for f in kust["resources"]:
    for d in yaml.safe_load_all((k8s / f).read_text()):
        if d:
            objs.append((f, d))
# The generated ConfigMaps, as kustomize makes them (without the name hash).
generated = {}
for g in kust.get("configMapGenerator", []):
    data = {}
    for spec in g["files"]:
        key, _, path = spec.partition("=") if "=" in spec else (pathlib.Path(spec).name, "", spec)
        data[key] = (k8s / path).read_text()
    generated[g["name"]] = data
    objs.append(("configMapGenerator", {"apiVersion": "v1", "kind": "ConfigMap",
                                         "metadata": {"name": g["name"]}, "data": data}))

API = {"Deployment": "apps/v1", "Service": "v1", "ConfigMap": "v1",
       "PodDisruptionBudget": "policy/v1", "Secret": "v1"}
for f, d in objs:
    kind = d.get("kind")
    need(kind in API, f"{f}: unexpected kind {kind!r}")
    need(d.get("apiVersion") == API.get(kind), f"{f}: {kind} has apiVersion {d.get('apiVersion')!r}, want {API.get(kind)!r}")
    need(bool(d.get("metadata", {}).get("name")), f"{f}: {kind} without metadata.name")

def by_kind(kind):
    return [d for _, d in objs if d.get("kind") == kind]

configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind("ConfigMap")}
secret = yaml.safe_load((k8s / "secret.example.yaml").read_text())
need(secret.get("kind") == "Secret" and secret.get("apiVersion") == "v1", "secret.example.yaml is not a v1 Secret")
need("CHANGE-ME" in secret.get("stringData", {}).get("SESSIONWARD_SECRET", ""),
     "secret.example.yaml must hold the obvious placeholder, not a usable secret")
need("secret.example.yaml" not in kust["resources"], "kustomization.yaml must not apply the example Secret")
secret_keys = {secret["metadata"]["name"]: set(secret.get("stringData", {})) | set(secret.get("data", {}) or {})}

def pod_ok(name, pod):
    sc = pod.get("securityContext", {})
    need(sc.get("runAsNonRoot") is True, f"{name}: pod securityContext.runAsNonRoot is not true")
    need(isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, f"{name}: pod runAsUser must be a non-zero UID")
    for vol in pod.get("volumes", []):
        if "configMap" in vol:
            need(vol["configMap"]["name"] in configmaps, f"{name}: volume {vol['name']} names unknown ConfigMap {vol['configMap']['name']}")
    for c in pod["containers"]:
        cn = f"{name}/{c['name']}"
        need(bool(c.get("resources", {}).get("requests", {}).get("cpu")) and bool(c["resources"]["requests"].get("memory")),
             f"{cn}: resources.requests.cpu and .memory are required")
        csc = c.get("securityContext", {})
        need(csc.get("allowPrivilegeEscalation") is False, f"{cn}: allowPrivilegeEscalation must be false")
        need(csc.get("readOnlyRootFilesystem") is True, f"{cn}: readOnlyRootFilesystem must be true")
        need(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{cn}: capabilities.drop must be [ALL]")
        need(csc.get("runAsNonRoot", True) is not False, f"{cn}: runAsNonRoot overridden to false")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                need(ref["key"] in secret_keys.get(ref["name"], set()),
                     f"{cn}: env {e['name']} reads {ref['name']}/{ref['key']}, which the example Secret does not show")
            need(not ("SECRET" in e["name"] and "value" in e), f"{cn}: {e['name']} is a literal value, not from a Secret")

deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
app = deployments.get("legacy-app")
need(app is not None, "no Deployment legacy-app")
if app:
    spec = app["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    need(spec.get("replicas", 1) >= 2, "legacy-app: run at least 2 replicas (sessions are in Redis)")
    need(all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()), "legacy-app: selector does not match the pod labels")
    pod_ok("legacy-app", pod)
    names = [c["name"] for c in pod["containers"]]
    need(names == ["app", "sessionward"], f"legacy-app: containers are {names}, want app + sessionward")
    sw = next((c for c in pod["containers"] if c["name"] == "sessionward"), None)
    if sw:
        ports = {p["name"]: p["containerPort"] for p in sw.get("ports", [])}
        need(ports.get("http") == 8080 and ports.get("admin") == 9090, f"sessionward ports are {ports}, want http 8080 and admin 9090")
        need(sw.get("args", [])[:3] == ["run", "--config", "/etc/sessionward/config.yaml"], f"sessionward args {sw.get('args')}")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = sw.get(probe, {}).get("httpGet", {})
            need(get.get("path") == path and get.get("port") in ("admin", 9090),
                 f"sessionward {probe} must GET {path} on the admin port, is {get}")
        env = {e["name"]: e for e in sw.get("env", [])}
        ref = env.get("SESSIONWARD_SECRET", {}).get("valueFrom", {}).get("secretKeyRef")
        need(ref is not None, "sessionward: SESSIONWARD_SECRET must come from a Secret (secretKeyRef)")
        mounts = {m["mountPath"]: m["name"] for m in sw.get("volumeMounts", [])}
        need("/etc/sessionward" in mounts, "sessionward: the config is not mounted at /etc/sessionward")
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        cm = vols.get(mounts.get("/etc/sessionward"), {}).get("configMap", {}).get("name")
        need("config.yaml" in configmaps.get(cm, {}), f"sessionward: ConfigMap {cm} has no config.yaml")
        if "config.yaml" in configmaps.get(cm, {}):
            conf = yaml.safe_load(configmaps[cm]["config.yaml"])
            need(str(conf.get("listen", "")).endswith(":8080"), f"config listen is {conf.get('listen')}, want :8080")
            need(str(conf.get("admin", {}).get("listen", "")) == "0.0.0.0:9090", "config admin.listen must be 0.0.0.0:9090 (the kubelet probes the pod IP)")
            need(conf.get("store", {}).get("kind") == "redis", "config store.kind must be redis (2 replicas)")
            need(conf.get("signing", {}).get("secret") == "${SESSIONWARD_SECRET}", "config signing.secret must be ${SESSIONWARD_SECRET}")
            grace = conf.get("shutdown_grace", 25)
            need(pod.get("terminationGracePeriodSeconds", 30) > grace, "terminationGracePeriodSeconds must exceed shutdown_grace")
    appc = next((c for c in pod["containers"] if c["name"] == "app"), None)
    if appc:
        need(not appc.get("ports"), "the app container must not expose ports: it is reached through sessionward only")

for name, d in deployments.items():
    if name != "legacy-app":
        pod_ok(name, d["spec"]["template"]["spec"])

services = {d["metadata"]["name"]: d for d in by_kind("Service")}
svc = services.get("legacy-app")
need(svc is not None, "no Service legacy-app")
if svc and app:
    need(svc["spec"]["selector"] == app["spec"]["selector"]["matchLabels"], "Service legacy-app does not select the Deployment's pods")
    targets = [p.get("targetPort") for p in svc["spec"]["ports"]]
    need(targets == ["http"], f"Service legacy-app targets {targets}: it must target the sidecar's http port only")
    need(all(t not in ("admin", 9090) for t in targets), "Service legacy-app exposes the admin port")

pdbs = by_kind("PodDisruptionBudget")
need(len(pdbs) == 1, "want exactly one PodDisruptionBudget")
if pdbs and app:
    need(pdbs[0]["spec"]["selector"]["matchLabels"] == app["spec"]["selector"]["matchLabels"], "the PodDisruptionBudget does not select legacy-app's pods")
    need("minAvailable" in pdbs[0]["spec"] or "maxUnavailable" in pdbs[0]["spec"], "the PDB sets neither minAvailable nor maxUnavailable")

# The demo app's copy in its ConfigMap is the file itself.
demo = configmaps.get("legacy-app-demo", {}).get("app.py")
need(demo == pathlib.Path("deploy/demo-app/app.py").read_text(),
     "demo-app.yaml's app.py differs from deploy/demo-app/app.py: copy the file into the ConfigMap")

# kubectl's own rendering: same objects, config reference rewritten to the hashed name.
if rendered.stat().st_size:
    r = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    have = sorted((d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["metadata"]["name"].startswith("sessionward-config-") else d["metadata"]["name"]) for d in r)
    want = sorted((d["kind"], d["metadata"]["name"]) for _, d in objs)
    need(have == want, f"kubectl kustomize renders {have}, expected {want}")

for p in problems:
    print("  problem:", p, file=sys.stderr)
print(f"checked {len(objs)} objects: {'ok' if not problems else f'{len(problems)} problem(s)'}")
sys.exit(1 if problems else 0)
PY

# ---------------------------------------------------------------------------
step "docker-compose.yml and Dockerfile"
check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml ||
    fail "docker-compose.yml does not validate against the compose spec"
python3 - <<'PY' || fail "compose/Dockerfile: see above"
import pathlib, re, sys, yaml
problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)
d = pathlib.Path("deploy")
c = yaml.safe_load((d / "docker-compose.yml").read_text())
s = c["services"]
need(set(s) >= {"sessionward", "app", "redis"}, f"services are {sorted(s)}")
sw = s.get("sessionward", {})
need(sw.get("env_file") == ".env", "sessionward must read its secret from env_file .env")
need("SESSIONWARD_SECRET" not in str(sw.get("environment", "")), "sessionward: no literal secret in the compose file")
env_example = (d / ".env.example").read_text()
need(re.search(r"^SESSIONWARD_SECRET=", env_example, re.M) is not None, ".env.example does not set SESSIONWARD_SECRET")
need(".env" in (d / ".gitignore").read_text().split(), "deploy/.gitignore must ignore .env")
build = sw.get("build", {})
need((d / build.get("context", "") / build.get("dockerfile", "")).resolve() == (d / "Dockerfile").resolve(), f"sessionward builds {build}, not deploy/Dockerfile")
for v in sw.get("volumes", []) + s.get("app", {}).get("volumes", []):
    need((d / v.split(":")[0]).exists(), f"compose volume source {v.split(':')[0]} does not exist")
for p in sw.get("ports", []):
    need(str(p).startswith("127.0.0.1:"), f"compose publishes {p} beyond the host's loopback")
need(not s.get("app", {}).get("ports"), "the app publishes ports: it must be reached through sessionward only")
need(str(sw.get("user", "0")).split(":")[0] not in ("0", "root"), "sessionward runs as root in compose")
conf = yaml.safe_load((d / "compose" / "sessionward.yaml").read_text())
need(conf.get("store", {}).get("kind") == "redis", "the compose config must use the Redis store")
need(conf.get("signing", {}).get("secret") == "${SESSIONWARD_SECRET}", "the compose config must take the secret from the environment")

df = (d / "Dockerfile").read_text()
ins = [l.strip() for l in re.sub(r"\\\n", " ", df).splitlines() if l.strip() and not l.lstrip().startswith("#")]
froms = [l for l in ins if l.upper().startswith("FROM ")]
need(len(froms) >= 2, "the Dockerfile is not multi-stage")
need(any(re.search(r"rust:.*alpine", l) for l in froms[:-1]) and "unknown-linux-musl" in df, "the build stage must be rust:*-alpine with the musl target")
need(re.search(r"FROM (gcr\.io/distroless/static|scratch)", froms[-1]) is not None, f"the final stage is {froms[-1]}, want distroless static or scratch")
users = [l.split()[1] for l in ins if l.upper().startswith("USER ")]
need(bool(users) and users[-1].split(":")[0] not in ("0", "root"), "the final image must set a non-root USER")
need(not any(l.upper().startswith("HEALTHCHECK") for l in ins), "no HEALTHCHECK (the orchestrator's probes do it)")
need('"run", "--config", "/etc/sessionward/config.yaml"' in df, "CMD must be run --config /etc/sessionward/config.yaml")
need("--locked" in df and "--release" in df, "the image must build --release --locked, as deploy/build-static.sh does")
ign = (d / "Dockerfile.dockerignore").read_text().split()
need("target" in ign and ".git" in ign, "Dockerfile.dockerignore must keep target/ and .git out of the context")
for p in problems:
    print("  problem:", p, file=sys.stderr)
print("compose and Dockerfile:", "ok" if not problems else f"{len(problems)} problem(s)")
sys.exit(1 if problems else 0)
PY

# ---------------------------------------------------------------------------
step "static binary (deploy/build-static.sh, release, --locked)"
export CARGO_TARGET_DIR=${SESSIONWARD_DEPLOY_TARGET_DIR:-${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sessionward/deploy-target}}
echo "target dir: $CARGO_TARGET_DIR"
BIN=$(bash deploy/build-static.sh) || fail "deploy/build-static.sh failed"
[[ -x "$BIN" ]] || fail "build-static.sh printed no binary path ($BIN)"
file_out=$(file -b "$BIN" 2>/dev/null || echo "(no file command)")
ldd_out=$(ldd "$BIN" 2>&1 || true)
echo "file: $file_out"
echo "ldd:  $ldd_out"
grep -Eq 'statically linked|static-pie linked' <<<"$file_out" ||
    grep -Eq 'not a dynamic executable|statically linked' <<<"$ldd_out" ||
    fail "$BIN is not static"
size=$(stat -c %s "$BIN")
# The image is this binary plus distroless/static (about 2 MB): keep it under 20 MB.
((size < 18 * 1024 * 1024)) || fail "the binary is $size bytes: the image would pass 20 MB"
echo "size: $size bytes ($((size / 1024 / 1024)) MiB; image budget 20 MB with ~2 MB of distroless)"
"$BIN" --version

# ---------------------------------------------------------------------------
step "sessionward check on every sessionward config under deploy/"
export SESSIONWARD_SECRET
SESSIONWARD_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
# Does this binary know the admin listener (`admin: {listen: ...}`)?
# shellcheck disable=SC2016 # ${SESSIONWARD_SECRET} is for sessionward to expand
printf 'listen: 127.0.0.1:0\nupstream: http://127.0.0.1:9\nadmin:\n  listen: 127.0.0.1:0\nsigning:\n  secret: ${SESSIONWARD_SECRET}\n' >"$WORK/probe.yaml"
if ! "$BIN" check --config "$WORK/probe.yaml" >/dev/null 2>"$WORK/probe.err"; then
    cat "$WORK/probe.err" >&2
    fail "sessionward check failed on a minimal config with an admin listener"
fi
configs=()
while IFS= read -r f; do configs+=("$f"); done < <(python3 - <<'PY'
import pathlib, yaml
for p in sorted(pathlib.Path("deploy").rglob("*")):
    if p.suffix in (".yml", ".yaml"):
        for d in yaml.safe_load_all(p.read_text()):
            if isinstance(d, dict) and {"listen", "upstream", "signing"} <= set(d):
                print(p)
                break
PY
)
[[ ${#configs[@]} -ge 2 ]] || fail "found ${#configs[@]} sessionward configs under deploy/, expected the compose and kubernetes ones"
for f in "${configs[@]}"; do
    cf=$f
    "$BIN" check --config "$cf" || fail "sessionward check rejected $f"
    # The placeholder of .env.example and secret.example.yaml must be refused.
    SESSIONWARD_SECRET=CHANGE-ME-to-a-random-secret-of-at-least-32-bytes \
        "$BIN" check --config "$cf" >/dev/null 2>"$WORK/placeholder.err" &&
        fail "sessionward accepted $f with the examples' placeholder secret"
    grep -q 'signing.secret' "$WORK/placeholder.err" ||
        fail "$f with the placeholder secret failed for another reason: $(cat "$WORK/placeholder.err")"
done
echo "each config is refused with the examples' placeholder secret, as it should be"

# ---------------------------------------------------------------------------
step "run: the static binary with the kubernetes config, Redis and the demo app"
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
read -r P_PROXY P_ADMIN P_APP P_REDIS <<<"$(free_ports 4)"

STORE=redis
if command -v redis-server >/dev/null 2>&1; then
    redis-server --port "$P_REDIS" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        >"$WORK/redis.log" 2>&1 &
    PIDS+=($!)
    export REDIS_URL="redis://127.0.0.1:$P_REDIS/0"
else
    STORE=memory
    echo "NOTE: no redis-server here: the run uses the memory store instead of Redis"
fi

APP_HOST=127.0.0.1 APP_PORT=$P_APP python3 deploy/demo-app/app.py >"$WORK/app.log" 2>&1 &
PIDS+=($!)

RUNCONF=$WORK/run.yaml
python3 - deploy/kubernetes/sessionward.yaml "$RUNCONF" "$P_PROXY" "$P_ADMIN" "$P_APP" "$STORE" <<'PY'
import sys, yaml
src, dst, proxy, admin, app, store = sys.argv[1:]
conf = yaml.safe_load(open(src))
conf["listen"] = f"127.0.0.1:{proxy}"
conf["upstream"] = f"http://127.0.0.1:{app}"
conf["admin"]["listen"] = f"127.0.0.1:{admin}"
if store == "memory":
    conf["store"] = {"kind": "memory"}
yaml.safe_dump(conf, open(dst, "w"), sort_keys=False)
PY
"$BIN" check --config "$RUNCONF" >/dev/null || fail "the run config does not check"

"$BIN" run --config "$RUNCONF" >"$WORK/sessionward.log" 2>&1 &
SW_PID=$!
PIDS+=("$SW_PID")

# Polls a URL until it answers HTTP 200 (prints the body) or the deadline passes.
poll200() {
    local url=$1 deadline=$(($(date +%s) + $2)) code
    while (($(date +%s) < deadline)); do
        kill -0 "$SW_PID" 2>/dev/null || { cat "$WORK/sessionward.log" >&2; fail "sessionward exited"; }
        code=$(curl -s -o "$WORK/body" -w '%{http_code}' --max-time 2 "$url" || true)
        if [[ $code == 200 ]]; then
            cat "$WORK/body"
            return 0
        fi
        sleep 0.2
    done
    echo "last answer from $url: HTTP ${code:-none}" >&2
    return 1
}

body=$(poll200 "http://127.0.0.1:$P_ADMIN/healthz" 20) || { cat "$WORK/sessionward.log" >&2; fail "/healthz on the admin port did not answer 200"; }
[[ $(tr -d '[:space:]' <<<"$body") == ok ]] || fail "/healthz answered 200 with \"$body\", want \"ok\""
echo "admin /healthz: 200 $body"
poll200 "http://127.0.0.1:$P_ADMIN/readyz" 20 >/dev/null || { cat "$WORK/sessionward.log" >&2; fail "/readyz did not become 200 with the store and the app up"; }
echo "admin /readyz: 200"
poll200 "http://127.0.0.1:$P_ADMIN/metrics" 5 >"$WORK/metrics" || fail "/metrics did not answer 200"
grep -q '^# \(HELP\|TYPE\) ' "$WORK/metrics" || fail "/metrics is not Prometheus text"
echo "admin /metrics: 200, $(grep -c '^# TYPE' "$WORK/metrics") metric families"

# A session through the proxy, the demo app and the store. The cookie is
# Secure (as in production); curl sends Secure cookies to 127.0.0.1 over http.
JAR=$WORK/jar
through() { curl -s --max-time 5 -c "$JAR" -b "$JAR" "$@" || true; }
rm -f "$JAR"
through "http://127.0.0.1:$P_PROXY/" >"$WORK/p1"
grep -q 'Hello, stranger; visit number 1<' "$WORK/p1" || { cat "$WORK/p1" "$WORK/app.log" >&2; fail "first visit: $(head -c 300 "$WORK/p1")"; }
through "http://127.0.0.1:$P_PROXY/" >"$WORK/p2"
grep -q 'visit number 2<' "$WORK/p2" || { cat "$WORK/app.log" >&2; fail "the session did not persist: $(head -c 300 "$WORK/p2")"; }
through -L -d user=ci "http://127.0.0.1:$P_PROXY/login" >"$WORK/p3"
grep -q 'Hello, ci; visit number 3<' "$WORK/p3" || fail "login: $(head -c 300 "$WORK/p3")"
through -L -d '' "http://127.0.0.1:$P_PROXY/logout" >"$WORK/p4"
if ! { grep -q 'You have been logged out.' "$WORK/p4" && grep -q 'Hello, stranger; visit number 1<' "$WORK/p4"; }; then
    fail "logout: $(head -c 300 "$WORK/p4")"
fi
# Straight to the app, without sessionward's token: refused.
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$P_APP/" || true)
[[ $code == 400 ]] || fail "the demo app answered $code to a request without a token, want 400"
echo "session round trip ($STORE store): visit 1, visit 2, login (cycle), logout (flush + flash): ok; the app refuses tokenless requests"
if [[ $STORE == redis ]] && command -v redis-cli >/dev/null 2>&1; then
    keys=$(redis-cli -p "$P_REDIS" --scan --pattern 'sessionward:*' | wc -l)
    ((keys > 0)) || fail "no sessionward:* keys in Redis"
    echo "redis holds $keys sessionward:* key(s)"
fi

# SIGTERM drains and exits 0.
kill -TERM "$SW_PID"
rc=0
timeout 30 tail --pid="$SW_PID" -f /dev/null || fail "sessionward did not exit within 30 s of SIGTERM"
wait "$SW_PID" || rc=$?
[[ $rc -eq 0 ]] || { cat "$WORK/sessionward.log" >&2; fail "sessionward exited $rc after SIGTERM"; }
echo "SIGTERM: drained and exited 0"

step "done"
echo "PASS: deploy_check: manifests, compose file, Dockerfile and the static binary ($((size / 1024 / 1024)) MiB) check out in $(($(date +%s) - T0)) s"
