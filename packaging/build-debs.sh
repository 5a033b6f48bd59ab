#!/usr/bin/env bash
# Builds fleetup-agent_VERSION_ARCH.deb and fleetup-server_VERSION_ARCH.deb with dpkg-deb:
# the binary, its systemd unit (docker/systemd, with /usr/bin paths), a configuration
# file under /etc/fleetup/, the state directory, and for the server a system user.
#
#   packaging/build-debs.sh [--bin-dir DIR] [--out DIR]
#
# --bin-dir: where fleetup-agent and fleetup-server are (default: builds them with
# `cargo build --release --workspace` and uses target/release). --out: where the .deb
# files go (default: target/debian). DEB_COMPRESS=none|gzip|xz (default xz).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
bin_dir=
out=target/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown option $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
done
command -v dpkg-deb >/dev/null || { echo "dpkg-deb is needed (apt-get install dpkg)" >&2; exit 1; }
if [ -z "$bin_dir" ]; then
  cargo build --release --workspace --quiet
  bin_dir=target/release
fi
for b in fleetup-agent fleetup-server; do
  [ -x "$bin_dir/$b" ] || { echo "$bin_dir/$b is missing: build it first or drop --bin-dir" >&2; exit 1; }
done
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# stage NAME: the common part of a package tree in $work/NAME.
stage() {
  local name=$1 root=$work/$1
  install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/fleetup" "$root/usr/share/doc/$name"
  install -m 0755 "$bin_dir/$name" "$root/usr/bin/$name"
  sed 's|/usr/local/bin/|/usr/bin/|g' "docker/systemd/$name.service" > "$root/lib/systemd/system/$name.service"
  install -m 0644 docs/operations.md "$root/usr/share/doc/$name/operations.md"
  printf 'fleetup %s\nLicense: Apache-2.0\n' "$version" > "$root/usr/share/doc/$name/copyright"
}

# prerm NAME: removing the package stops and disables its unit (an upgrade does not).
prerm() {
  cat > "$work/$1/DEBIAN/prerm" <<SH
#!/bin/sh
set -e
if [ "\$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl disable --now $1 >/dev/null 2>&1 || true
fi
SH
}

# control NAME DESCRIPTION DEPENDS [RECOMMENDS]
control() {
  local root=$work/$1
  {
    echo "Package: $1"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: fleetup maintainers <fleetup@example.invalid>"
    echo "Section: admin"
    echo "Priority: optional"
    echo "Depends: $3"
    [ -n "${4:-}" ] && echo "Recommends: $4"
    echo "Installed-Size: $(du -ks "$root" | cut -f1)"
    echo "Description: $2"
  } > "$root/DEBIAN/control"
}

build() {
  local comp=${DEB_COMPRESS:-xz}
  find "$work/$1" -type d -exec chmod 0755 {} +
  chmod 0755 "$work/$1/DEBIAN/"{postinst,prerm,postrm} 2>/dev/null || true
  [ -n "${2:-}" ] && chmod "$2" "$work/$1$3"
  dpkg-deb --root-owner-group -Z"$comp" --build "$work/$1" "$out/${1}_${version}_${arch}.deb" >/dev/null
  echo "$out/${1}_${version}_${arch}.deb"
}

# --- fleetup-agent -------------------------------------------------------------------
stage fleetup-agent
root=$work/fleetup-agent
install -d "$root/var/lib/fleetup-agent"
install -m 0644 packaging/agent.toml.example "$root/etc/fleetup/agent.toml.example"
cat > "$root/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  chmod 0700 /var/lib/fleetup-agent
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # An upgrade restarts an enrolled agent (it finishes or recovers its job first).
    if [ -n "$2" ] && systemctl is-active --quiet fleetup-agent; then systemctl restart fleetup-agent || true; fi
  fi
  [ -f /etc/fleetup/agent.toml ] || echo "fleetup-agent: enroll it, then start it: fleetup-agent enroll --server https://… --token …; systemctl enable --now fleetup-agent"
fi
SH
prerm fleetup-agent
cat > "$root/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
# The identity and journal stay on remove; purge deletes them and the enrolled config.
if [ "$1" = purge ]; then rm -rf /var/lib/fleetup-agent /etc/fleetup/agent.toml; fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
SH
control fleetup-agent "fleetup agent: installs signed rollup packages dispatched by a fleetup coordinator" "libc6" "ca-certificates"
build fleetup-agent 0700 /var/lib/fleetup-agent

# --- fleetup-server ------------------------------------------------------------------
stage fleetup-server
root=$work/fleetup-server
install -d "$root/var/lib/fleetup-server"
install -m 0640 packaging/server.env "$root/etc/fleetup/server.env"
echo /etc/fleetup/server.env > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd fleetup >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/fleetup-server --no-create-home \
      --shell /usr/sbin/nologin --comment "fleetup coordinator" fleetup
  fi
  install -d -o fleetup -g fleetup -m 0750 /var/lib/fleetup-server /var/lib/fleetup-server/data
  chgrp fleetup /etc/fleetup/server.env
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ -n "$2" ] && systemctl is-active --quiet fleetup-server; then systemctl restart fleetup-server || true; fi
  fi
fi
SH
prerm fleetup-server
cat > "$root/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
# The database and packages stay unless purged; the user stays (files may still be owned).
if [ "$1" = purge ]; then rm -rf /var/lib/fleetup-server; fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
SH
control fleetup-server "fleetup coordinator: rollout plans, the agent protocol, the REST API and the dashboard" "libc6, passwd"
build fleetup-server 0640 /etc/fleetup/server.env
