# Shared helpers for the project's scripts. Sourced, not run.

# ensure_packages PKG...: installs the Debian packages that are missing.
# Runs apt-get only when something is missing, so repeated runs are fast.
ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The packages the test suite needs (real FUSE, netns, dockerd, peers).
TEST_PACKAGES=(fuse3 docker.io busybox-static iproute2 iputils-ping curl keepalived tar ca-certificates openssl git util-linux chromium binutils)
