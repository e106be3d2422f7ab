#!/usr/bin/env bash
# Check a .deb made by cross/package.sh: architecture, contents, maintainer
# scripts, that the binary is for the right CPU and glibc floor, and that the
# systemd unit passes `systemd-analyze verify`.
#
#   cross/check_package.sh FILE.deb arm64|armhf
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=cross/boards.sh
. "$ROOT/cross/boards.sh"
[ $# -eq 2 ] || { echo "usage: cross/check_package.sh FILE.deb arm64|armhf" >&2; exit 2; }
DEB="$1"; WANT="$2"
board_for_deb_arch "$WANT" || { echo "error: arch must be arm64 or armhf" >&2; exit 2; }
fail() { echo "package check failed: $*" >&2; exit 1; }
X="$(mktemp -d)"; trap 'rm -rf "$X"' EXIT
[ "$(dpkg-deb -f "$DEB" Architecture)" = "$WANT" ] || fail "Architecture is not $WANT"
[ "$(dpkg-deb -f "$DEB" Package)" = edge-bert ] || fail "Package is not edge-bert"
dpkg-deb -x "$DEB" "$X/root"
dpkg-deb -e "$DEB" "$X/control"
for f in usr/bin/edge-bert lib/systemd/system/edge-bert.service etc/default/edge-bert \
         usr/share/doc/edge-bert/protocol.md usr/share/doc/edge-bert/copyright; do
  [ -f "$X/root/$f" ] || fail "missing /$f"
done
[ -x "$X/root/usr/bin/edge-bert" ] || fail "/usr/bin/edge-bert is not executable"
for d in etc/edge-bert/keys var/lib/edge-bert/models; do
  [ -d "$X/root/$d" ] || fail "missing directory /$d"
done
for s in postinst prerm postrm; do
  [ -x "$X/control/$s" ] || fail "missing maintainer script $s"
  sh -n "$X/control/$s" || fail "$s does not parse"
done
grep -qx /etc/default/edge-bert "$X/control/conffiles" || fail "/etc/default/edge-bert is not a conffile"
readelf -h "$X/root/usr/bin/edge-bert" | grep -q "Machine:.*$MACHINE" || fail "binary is not $MACHINE"
GLIBC="$(highest_glibc "$X/root/usr/bin/edge-bert")"
glibc_ok "$GLIBC" "$GLIBC_FLOOR" || fail "binary needs GLIBC_$GLIBC, above $GLIBC_FLOOR"
# systemd-analyze checks that ExecStart's program is executable on this
# host, so verify a copy of the unit that points at the extracted binary.
sed "s#/usr/bin/edge-bert#$X/root/usr/bin/edge-bert#" "$X/root/lib/systemd/system/edge-bert.service" \
  > "$X/edge-bert.service"
systemd-analyze verify --man=no "$X/edge-bert.service" || fail "systemd-analyze verify"
echo "package ok: $DEB ($WANT, $(stat -c %s "$DEB") bytes, binary needs GLIBC_$GLIBC, unit verified)"
