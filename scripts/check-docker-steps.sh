#!/usr/bin/env bash
# The Dockerfile's build and run steps as plain shell commands: CI cannot pull the base images,
# so this does what each stage does, on this machine, and checks the result:
#
#   build stage    the Dockerfile's own `RUN cargo build ...` line, run here;
#   runtime stage  the binary laid out under a staging root as the image has it, started with
#                  the image's ENV (read from the Dockerfile) and ENTRYPOINT, as the image's
#                  unprivileged user (uid 10001, through setpriv when run as root), with a model
#                  directory "mounted" (copied, read-only) and an API key from the environment;
#   checks         the HEALTHCHECK command (read from the Dockerfile) passes, /embed needs the
#                  key and answers with it, and SIGTERM drains and exits 0.
#
# Differences from a real container, on purpose: the host is 127.0.0.1 (not the image's
# 0.0.0.0) and the port a free one, so nothing listens beyond loopback. Needs python3 for the
# HTTP checks. Usage: bash scripts/check-docker-steps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

build=$(grep -E '^RUN cargo build ' Dockerfile | sed 's/^RUN //')
[ -n "$build" ] || { echo "no RUN cargo build line in Dockerfile" >&2; exit 1; }
echo "build stage: $build"
eval "$build"

stage=$(mktemp -d)
chmod 755 "$stage"  # the image's root is readable by its user
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -rf "$stage"
}
trap cleanup EXIT

# runtime stage: COPY --from=build ... /usr/local/bin/deberta-embed
dest=$(grep -E '^COPY --from=build ' Dockerfile | awk '{print $NF}')
install -D -m 0755 target/release/deberta-embed "$stage$dest"
mkdir -p "$stage/home/embed" "$stage/model"
cp -r tests/fixtures/models/st2_v3like/. "$stage/model/"
chmod -R a+rX,a-w "$stage/model"

# ENV lines, in order (each `ENV NAME=value` on one line)
while IFS= read -r line; do
    kv=${line#ENV }
    export "${kv%%=*}"="${kv#*=}"
done < <(grep -E '^ENV [A-Z_]+=' Dockerfile)
# paths of the image, relocated under the staging root
export HF_HOME="$stage${HF_HOME}"
export HOME="$stage/home/embed"
export HF_HUB_OFFLINE=1
export DEBERTA_EMBED_MODEL="$stage/model"
export DEBERTA_EMBED_HOST=127.0.0.1
DEBERTA_EMBED_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export DEBERTA_EMBED_PORT
export DEBERTA_EMBED_API_KEY="check-$RANDOM-$RANDOM"

as_user=()
if [ "$(id -u)" = 0 ]; then
    user=$(grep -E '^USER ' Dockerfile | awk '{print $2}')
    chown -R "$user" "$stage/home/embed"
    as_user=(setpriv --reuid="${user%%:*}" --regid="${user##*:}" --clear-groups)
else
    echo "(not root: running as $(id -un), not as the image's uid)"
fi

# ENTRYPOINT ["deberta-embed", "serve"]
entry=$(grep -E '^ENTRYPOINT ' Dockerfile | sed 's/^ENTRYPOINT //' | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)[1:]))')
log="$stage/serve.log"
(cd "$stage/home/embed" && exec "${as_user[@]}" "$stage$dest" $entry) 2>"$log" &
pid=$!

healthcheck=$(grep -E '^HEALTHCHECK ' Dockerfile | sed 's/^.* CMD //')
ok=""
for _ in $(seq 1 100); do
    if "${as_user[@]}" sh -c "$healthcheck" 2>/dev/null; then ok=1; break; fi
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "the server exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$ok" ] || { cat "$log" >&2; echo "HEALTHCHECK never passed" >&2; exit 1; }
echo "runtime stage: HEALTHCHECK passes as uid $("${as_user[@]}" id -u)"

python3 - <<'PY'
import json, os, urllib.request, urllib.error
base = f"http://127.0.0.1:{os.environ['DEBERTA_EMBED_PORT']}"
body = json.dumps({"inputs": ["A man is eating food."]}).encode()
def post(headers):
    req = urllib.request.Request(base + "/embed", body, {"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
status, _ = post({})
assert status == 401, status
status, rows = post({"Authorization": "Bearer " + os.environ["DEBERTA_EMBED_API_KEY"]})
assert status == 200 and len(rows) == 1 and len(rows[0]) == 32, (status, rows)
print("runtime stage: /embed refuses without the key, answers with it")
PY

grep -q '"level":"INFO"' "$log" || { cat "$log" >&2; echo "no JSON log line" >&2; exit 1; }
kill -TERM "$pid"
set +e
wait "$pid"
rc=$?
set -e
pid=""
[ "$rc" = 0 ] || { cat "$log" >&2; echo "exit code $rc after SIGTERM" >&2; exit 1; }
echo "runtime stage: SIGTERM drained and exited 0"
