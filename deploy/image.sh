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
#   WHEELS               folder of local wheels mounted into the build (buildah only;
#                        default: pip's configured find-links when it holds the torch wheel)
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

# Echo the base to build from: BASE when present or pullable, else the debootstrapped base.
resolve_base() {
  if have_image "$BASE"; then echo "$BASE"; return; fi
  log "pulling $BASE (at most ${PULL_TIMEOUT}s)"
  if timeout "$PULL_TIMEOUT" "${eng[@]}" pull "$BASE" >&2; then echo "$BASE"; return; fi
  log "$BASE cannot be pulled: building from a debootstrapped Debian bookworm ($LOCAL_BASE)"
  have_image "$LOCAL_BASE" || make_base >&2
  echo "$LOCAL_BASE"
}

# The folder holding the CPU torch wheel, from WHEELS or pip's configured find-links.
local_wheels() {
  local dir
  for dir in ${WHEELS:-} ${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true); do
    if compgen -G "$dir/torch-${torch_version}+cpu-*.whl" >/dev/null; then echo "$dir"; return; fi
  done
}

build() {
  local base wheels start
  pick_engine
  base="$(resolve_base)"
  local args=(--build-arg "BASE=$base" --build-arg "VERSION=$version"
    --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || true)"
    --build-arg "SOURCE=$(git remote get-url origin 2>/dev/null || true)")
  local tsops_args=(--build-arg "TORCH_VERSION=$torch_version")
  if [ "$e" = buildah ]; then
    wheels="$(local_wheels)"
    if [ -n "$wheels" ]; then
      log "torch from the local wheel folder $wheels (mounted at /wheels)"
      tsops_args+=(--volume "$wheels:/wheels:ro" --build-arg WHEELS=/wheels)
    fi
    args+=(--layers --network host)
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
python - "$port" <<'PY'
import sys, time, urllib.error, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.monotonic() + 180
answers: dict[str, tuple[int, str]] = {}
while time.monotonic() < deadline and answers.get("ready", (0,))[0] != 200:
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

check() {
  pick_engine
  have_image "$IMAGE" || { log "$IMAGE is not built: make image"; exit 1; }
  if [ "$e" = docker ]; then
    log "docker run $IMAGE --help"
    docker run --rm "$IMAGE" --help
    log "docker run: init, ingest, train --quick, promote, serve, health"
    docker run --rm --entrypoint /bin/bash "$IMAGE" -c "$check_script"
  elif command -v podman >/dev/null 2>&1; then
    log "podman run $IMAGE --help"
    podman "${buildah_opts[@]}" run --rm "$IMAGE" --help
    log "podman run: init, ingest, train --quick, promote, serve, health"
    podman "${buildah_opts[@]}" run --rm --network host --entrypoint /bin/bash "$IMAGE" -c "$check_script"
  else
    # buildah run ignores ENTRYPOINT: the commands are given in full, as the image's user.
    local c
    c="$("${eng[@]}" from "$IMAGE")"
    trap '"${eng[@]}" rm "$c" >/dev/null' EXIT
    log "buildah run $IMAGE -- tsops --help"
    "${eng[@]}" run "$c" -- tsops --help
    log "buildah run: init, ingest, train --quick, promote, serve, health"
    "${nice_cmd[@]}" "${eng[@]}" run --network host "$c" -- /bin/bash -c "$check_script"
  fi
  log "check passed"
}

case "${1:-}" in
  build) build ;;
  base) pick_engine; make_base ;;
  check) check ;;
  *) echo "usage: $0 build|base|check" >&2; exit 2 ;;
esac
