#!/usr/bin/env bash
# Install the programs the test suite drives, from Debian's packages, if they are missing.
#
#   scripts/install-test-deps.sh           install what is missing (as root), else do nothing
#   scripts/install-test-deps.sh --check   only report; exit 1 if anything is missing
#
# Idempotent: when every command is already there it touches nothing (no apt-get update).
# Packages come without their Recommends. podman as root with `--storage-driver vfs` needs none
# of them (uidmap, fuse-overlayfs, slirp4netns, netavark, catatonit are for rootless use, for
# overlay storage, or for running containers with networking); its hard dependencies bring conmon,
# runc and containers-common (policy.json, registries.conf). docker.io (Docker Engine 20.10, for
# dockerd; the tests run it with vfs storage, no bridge, no iptables) needs none of its Recommends
# either (apparmor, cgroupfs-mount, git, xz-utils, ...); its hard dependencies bring containerd,
# runc, tini (docker-init) and iptables. Its postinst may start the system docker service where
# an init system runs; the tests never use it (they start a dockerd of their own).
set -euo pipefail

# command -> Debian package (bookworm)
declare -A PACKAGE_OF=(
  [skopeo]=skopeo
  [docker-registry]=docker-registry   # distribution/distribution v2.8: the registry:2 peer
  [containerd]=containerd
  [ctr]=containerd
  [runc]=runc                         # containerd's runtime (a Depends; checked for clarity)
  [podman]=podman
  [dockerd]=docker.io                 # Docker Engine; the docker CLI comes with it
  [wrk]=wrk
  [openssl]=openssl
  [curl]=curl
  # Ceph's radosgw: the S3 server the storage suite and the S3 e2e tests start (tests/cephs3.py)
  [radosgw]=radosgw
  [radosgw-admin]=radosgw
  [ceph-mon]=ceph-mon
  [monmaptool]=ceph-mon
  [ceph-osd]=ceph-osd
  [ceph]=ceph-common
  [chromium]=chromium                 # the web UI's browser tests (driven by Playwright)
  [nginx]=nginx                       # in front of docker-registry: sends ratelimit-* headers
  [debootstrap]=debootstrap           # the container image test's Debian base (no registry here)
)
# Fixed order, for stable messages.
COMMANDS=(skopeo docker-registry containerd ctr runc podman dockerd wrk openssl curl
  radosgw radosgw-admin ceph-mon monmaptool ceph-osd ceph nginx chromium debootstrap)

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

have() {
  # docker-registry, runc and dockerd live in /usr/bin and /usr/sbin; a non-root PATH may lack
  # sbin.
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

missing_cmds=()
missing_pkgs=()
for cmd in "${COMMANDS[@]}"; do
  if ! have "$cmd"; then
    missing_cmds+=("$cmd")
    pkg="${PACKAGE_OF[$cmd]}"
    case " ${missing_pkgs[*]-} " in
      *" $pkg "*) ;;
      *) missing_pkgs+=("$pkg") ;;
    esac
  fi
done

if [ "${#missing_pkgs[@]}" -eq 0 ]; then
  echo "install-test-deps: all present (${COMMANDS[*]})"
  exit 0
fi

echo "install-test-deps: missing commands: ${missing_cmds[*]}"
install_cmd="apt-get install -y --no-install-recommends ${missing_pkgs[*]}"

if [ "$check_only" -eq 1 ]; then
  echo "install-test-deps: to install them: apt-get update && $install_cmd" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: no apt-get here; install these packages (Debian names): ${missing_pkgs[*]}" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps: not root; run as root (or with sudo):" >&2
  echo "  apt-get update && $install_cmd" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-q -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300)
echo "install-test-deps: apt-get update"
apt-get "${apt_opts[@]}" update
echo "install-test-deps: $install_cmd"
apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing_pkgs[@]}"

still_missing=()
for cmd in "${missing_cmds[@]}"; do
  have "$cmd" || still_missing+=("$cmd")
done
if [ "${#still_missing[@]}" -ne 0 ]; then
  echo "install-test-deps: still missing after install: ${still_missing[*]}" >&2
  exit 1
fi
echo "install-test-deps: installed ${missing_pkgs[*]}"
