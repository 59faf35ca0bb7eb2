#!/usr/bin/env bash
# Build and check the tsops images with whatever the machine has (`make image`,
# `make image-check`; deploy/README.md).
#
#   deploy/image.sh build   tsops:VERSION and tsops-spark:VERSION from deploy/Dockerfile*
#   deploy/image.sh base    a Debian bookworm base made with debootstrap (no registry needed)
#   deploy/image.sh check   run the built image: tsops --help, then a tiny project served
#
# Engine: docker when `docker info` answers, else buildah (installed from Debian when
# missing). Base: BASE when present or pullable, else (buildah) the debootstrapped one.
#
# Settings (environment):
#   IMAGE, IMAGE_SPARK   image names (default tsops:VERSION, tsops-spark:VERSION)
#   BASE                 base image (default python:3.11-slim-bookworm)
#   LOCAL_BASE           name of the debootstrapped base (default localhost/tsops-base:bookworm)
#   IMAGE_WORK           work folder outside the repository (default /var/tmp/tsops-image)
#   BUILDAH_OPTS         global buildah options, e.g. "--root DIR --runroot DIR"
#   BUILDAH_ISOLATION    buildah's RUN isolation (default: chroot inside a container, else oci)
#   (buildah) this machine's pip settings go into the build: `pip config list` becomes the
#   build's pip.conf, every local path it names is mounted read-only; torch comes from a
#   configured wheel folder when it holds the CPU wheel, else from the CPU index.
#   PULL_TIMEOUT         seconds to try pulling BASE (default 90)
#   NICE                 prefix for the heavy commands (default "nice -n 19 ionice -c3")
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cd "$repo"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)"
torch_version="$(sed -n 's/^TORCH_VERSION *:= *//p' Makefile | head -n1)"
IMAGE="${IMAGE:-tsops:$version}"
IMAGE_SPARK="${IMAGE_SPARK:-tsops-spark:$version}"
BASE="${BASE:-python:3.11-slim-bookworm}"
LOCAL_BASE="${LOCAL_BASE:-localhost/tsops-base:bookworm}"
IMAGE_WORK="${IMAGE_WORK:-/var/tmp/tsops-image}"
PULL_TIMEOUT="${PULL_TIMEOUT:-90}"
read -r -a nice_cmd <<<"${NICE-nice -n 19 ionice -c3}"
read -r -a buildah_opts <<<"${BUILDAH_OPTS:-}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

log() { printf '==> %s\n' "$*" >&2; }

apt_install() {
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# Sets `e` (docker | buildah) and `eng`, the engine's command with its global options.
pick_engine() {
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    e=docker
    eng=(docker)
  else
    command -v buildah >/dev/null 2>&1 || apt_install buildah >&2
    e=buildah
    eng=(buildah "${buildah_opts[@]}")
  fi
}

have_image() {
  if [ "$e" = buildah ]; then "${eng[@]}" inspect --type image "$1" >/dev/null 2>&1
  else docker image inspect "$1" >/dev/null 2>&1; fi
}

# A Debian bookworm root made with debootstrap, imported as LOCAL_BASE. Its python3 is 3.11.
make_base() {
  local rootfs="$IMAGE_WORK/rootfs" tarball="$IMAGE_WORK/rootfs.tar"
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  mkdir -p "$IMAGE_WORK"
  if [ ! -x "$rootfs/usr/bin/python3" ]; then
    log "debootstrap bookworm into $rootfs"
    rm -rf "$rootfs"
    "${nice_cmd[@]}" $sudo debootstrap --variant=minbase \
      --include=python3,python3-venv,ca-certificates bookworm "$rootfs" http://deb.debian.org/debian
  fi
  printf '%s\n' \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main" \
    | $sudo tee "$rootfs/etc/apt/sources.list" >/dev/null
  $sudo rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  log "import $rootfs as $LOCAL_BASE"
  "${nice_cmd[@]}" $sudo tar -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$tarball" .
  if [ "$e" = docker ]; then
    docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$tarball" "$LOCAL_BASE"
  else
    local c
    c="$("${eng[@]}" from scratch)"
    "${nice_cmd[@]}" "${eng[@]}" add "$c" "$tarball" / >/dev/null
    "${eng[@]}" config --env LANG=C.UTF-8 --cmd '["/bin/bash"]' \
      --label org.opencontainers.image.description="Debian bookworm (debootstrap minbase) with python3 3.11" "$c"
    "${nice_cmd[@]}" "${eng[@]}" commit --rm "$c" "$LOCAL_BASE" >/dev/null
  fi
  rm -f "$tarball"
}

# Inside a container (as here) buildah's runtime cannot make cgroups for RUN steps: chroot.
isolation() {
  if [ -n "${BUILDAH_ISOLATION:-}" ]; then echo "$BUILDAH_ISOLATION"
  elif [ -e /.dockerenv ] || [ -e /run/.containerenv ]; then echo chroot
  else echo oci; fi
}

# Echo the base to build from: BASE when present or pullable, else the debootstrapped base.
resolve_base() {
  if have_image "$BASE"; then echo "$BASE"; return; fi
  log "pulling $BASE (at most ${PULL_TIMEOUT}s)"
  if timeout "$PULL_TIMEOUT" "${eng[@]}" pull "$BASE" >&2; then echo "$BASE"; return; fi
  log "$BASE cannot be pulled: building from a debootstrapped Debian bookworm ($LOCAL_BASE)"
  have_image "$LOCAL_BASE" || make_base >&2
  echo "$LOCAL_BASE"
}

# This machine's pip settings for the build (`pip config list`: wheel folders, mirrors, a CA
# bundle, constraints), written to IMAGE_WORK/pip.conf; echoes the build options that mount it
# and every local path it names (read-only, at the same path).
host_pip_args() {
  command -v pip >/dev/null 2>&1 || return 0
  local line key value token conf="$IMAGE_WORK/pip.conf"
  declare -A settings=() mounts=()
  while IFS= read -r line; do
    key="${line%%=*}"
    key="${key#*.}"
    value="${line#*=}"
    value="${value#\'}"
    value="${value%\'}"
    settings["$key"]="$value"
  done < <(pip config list 2>/dev/null)
  [ "${#settings[@]}" -gt 0 ] || return 0
  mkdir -p "$IMAGE_WORK"
  {
    echo "[global]"
    for key in "${!settings[@]}"; do
      printf '%s = %s\n' "$key" "${settings[$key]}"
      for token in ${settings[$key]}; do
        token="${token#file://}"
        # a local index's pages link to files beside it (simple/ and files/ under one root)
        case "$key" in *index-url) token="$(dirname "$token")" ;; esac
        if [ "${token#/}" != "$token" ] && [ -e "$token" ]; then mounts["$token"]=1; fi
      done
    done
  } >"$conf"
  echo --volume "$conf:/tmp/pip-build.conf:ro" --build-arg PIP_CONFIG_FILE=/tmp/pip-build.conf
  for token in "${!mounts[@]}"; do echo --volume "$token:$token:ro"; done
  for token in ${settings[find-links]:-}; do
    if compgen -G "${token#file://}/torch-${torch_version}+cpu-*.whl" >/dev/null; then
      echo --build-arg TORCH_INDEX_URL=
      break
    fi
  done
}

build() {
  local base start
  pick_engine
  base="$(resolve_base)"
  local args=(--build-arg "BASE=$base" --build-arg "VERSION=$version"
    --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || true)"
    --build-arg "SOURCE=$(git remote get-url origin 2>/dev/null || true)")
  local tsops_args=(--build-arg "TORCH_VERSION=$torch_version")
  if [ "$e" = buildah ]; then
    local pip_args
    read -r -a pip_args <<<"$(host_pip_args | tr '\n' ' ')"
    if [ "${#pip_args[@]}" -gt 0 ]; then
      log "pip inside the build uses this machine's pip settings ($IMAGE_WORK/pip.conf): ${pip_args[*]}"
      tsops_args+=("${pip_args[@]}")
    fi
    # docker format keeps SHELL (OCI drops it)
    args+=(--format docker --layers --force-rm --network host --isolation "$(isolation)")
  fi
  start=$SECONDS
  log "$e: building $IMAGE from $base"
  "${nice_cmd[@]}" "${eng[@]}" build -f deploy/Dockerfile "${args[@]}" "${tsops_args[@]}" -t "$IMAGE" .
  log "$e: building $IMAGE_SPARK"
  "${nice_cmd[@]}" "${eng[@]}" build -f deploy/Dockerfile.spark "${args[@]}" \
    --build-arg "TSOPS_IMAGE=$IMAGE" -t "$IMAGE_SPARK" .
  log "built in $((SECONDS - start)) s"
  "${eng[@]}" images | { read -r header; echo "$header"; grep -E "tsops(-spark|-base)?" || true; }
}

# Runs inside the image: a tiny project from init to a champion, served on a free port.
read -r -d '' check_script <<'EOF' || true
set -euo pipefail
echo "user: $(id)"
tsops init /tmp/p --example synthetic --entities 3
cd /tmp/p
tsops ingest
tsops train --quick
tsops promote
port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
tsops serve --port "$port" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
python - "$port" "$server" <<'PY'
import os, sys, time, urllib.error, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.monotonic() + 180
answers: dict[str, tuple[int, str]] = {}
while time.monotonic() < deadline and answers.get("ready", (0,))[0] != 200:
    try:
        os.kill(int(sys.argv[2]), 0)
    except ProcessLookupError:
        print("tsops serve exited")
        break
    for name in ("live", "ready"):
        try:
            with urllib.request.urlopen(f"{base}/v2/health/{name}", timeout=5) as r:
                answers[name] = (r.status, r.read().decode())
        except urllib.error.HTTPError as e:
            answers[name] = (e.code, e.read().decode())
        except OSError as e:
            answers[name] = (0, str(e))
    time.sleep(1)
for name, (status, body) in answers.items():
    print(f"GET /v2/health/{name} -> {status} {body}")
sys.exit(0 if answers.get("live", (0,))[0] == 200 and answers.get("ready", (0,))[0] == 200 else 1)
PY
EOF

# `run_in IMAGE COMMAND...`: COMMAND in a fresh container of IMAGE, as the image's user, on
# the host's network. docker or podman when present (the command replaces the entrypoint),
# else buildah run (which never applies an entrypoint).
run_in() {
  local image="$1" status=0
  shift
  if [ "$e" = docker ] || command -v podman >/dev/null 2>&1; then
    local runner=(docker)
    [ "$e" = docker ] || runner=(podman "${buildah_opts[@]}")
    "${nice_cmd[@]}" "${runner[@]}" run --rm --network host --entrypoint "$1" "$image" "${@:2}"
    return
  fi
  container="$("${eng[@]}" from "$image")"
  "${nice_cmd[@]}" "${eng[@]}" run --isolation "$(isolation)" --network host "$container" -- "$@" \
    || status=$?
  "${eng[@]}" rm "$container" >/dev/null
  return "$status"
}

check() {
  pick_engine
  have_image "$IMAGE" || { log "$IMAGE is not built: make image"; exit 1; }
  local runner="buildah run"
  [ "$e" = docker ] && runner="docker run"
  [ "$e" = buildah ] && command -v podman >/dev/null 2>&1 && runner="podman run"
  log "$runner $IMAGE: tsops --help"
  run_in "$IMAGE" tsops --help
  log "$runner $IMAGE: init, ingest, train --quick, promote, serve, health"
  run_in "$IMAGE" /bin/bash -c "$check_script"
  if have_image "$IMAGE_SPARK"; then
    log "$runner $IMAGE_SPARK: /opt/entrypoint.sh pass-through, spark-submit of the tsops main file"
    run_in "$IMAGE_SPARK" /opt/entrypoint.sh /bin/bash -c \
      'set -euo pipefail; id; java -version 2>&1 | head -n1; echo "SPARK_HOME=$SPARK_HOME"
       # a buildah container'"'"'s hostname is not in its /etc/hosts (a pod'"'"'s is): Spark binds loopback
       SPARK_LOCAL_IP=127.0.0.1 SPARK_LOCAL_HOSTNAME=localhost \
         spark-submit --master "local[1]" /opt/tsops/tsops_app.py --help 2>&1 | grep -E "Usage|serve |stream "'
  fi
  log "check passed"
}

case "${1:-}" in
  build) build ;;
  base) pick_engine; make_base ;;
  check) check ;;
  *) echo "usage: $0 build|base|check" >&2; exit 2 ;;
esac
