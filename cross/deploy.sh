#!/usr/bin/env bash
# Install edge-bert on a board over ssh and restart the service.
#
#   cross/deploy.sh [--dry-run] [--arch aarch64|armv7] [--deb FILE] user@host
#
# Without --deb it builds the package first (cross/package.sh ARCH --release).
# Then: copies the .deb to the board with scp, installs it with
# `sudo apt-get install -y ./edge-bert_*.deb` (which pulls in adduser and
# runs the maintainer scripts: system user, enable, restart), restarts the
# service, waits for it to be active, and classifies one text through the
# socket on the board as a smoke test.
#
# --dry-run prints every command it would run, one per line, prefixed with
# "+ ", and runs none of them (not even the build).
#
# Examples:
#   cross/deploy.sh pi@raspberrypi.local                      # Pi 4/5, 64-bit OS
#   cross/deploy.sh --arch armv7 pi@pi3.local                 # 32-bit Pi OS
#   cross/deploy.sh --deb target-deb/edge-bert_0.1.0_arm64.deb ubuntu@jetson
#   cross/deploy.sh --dry-run pi@raspberrypi.local
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() {
  echo "usage: cross/deploy.sh [--dry-run] [--arch aarch64|armv7] [--deb FILE] user@host" >&2
  exit 2
}
DRY=""; ARCH=aarch64; DEB=""; HOST=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --arch) [ $# -ge 2 ] || usage; ARCH="$2"; shift ;;
    --deb) [ $# -ge 2 ] || usage; DEB="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "error: unknown option $1" >&2; usage ;;
    *) [ -z "$HOST" ] || usage; HOST="$1" ;;
  esac
  shift
done
[ -n "$HOST" ] || usage
# shellcheck source=cross/boards.sh
. "$ROOT/cross/boards.sh"
board "$ARCH" || { echo "error: --arch must be aarch64 or armv7" >&2; exit 2; }
case "$HOST" in
  *[!A-Za-z0-9@._:-]*|-*) echo "error: bad host $HOST" >&2; exit 2 ;;
esac
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"

run() {
  if [ -n "$DRY" ]; then printf '+ %s\n' "$*"; else "$@"; fi
}

if [ -z "$DEB" ]; then
  DEB="$ROOT/target-deb/edge-bert_${VERSION}_${DEB_ARCH}.deb"
  run bash "$ROOT/cross/package.sh" "$ARCH" --release --out "$ROOT/target-deb"
elif [ -z "$DRY" ] && [ ! -f "$DEB" ]; then
  echo "error: no such package: $DEB" >&2; exit 1
fi
NAME="$(basename "$DEB")"
SSH_OPTS=(-o BatchMode=yes -o ConnectTimeout=10)
run scp "${SSH_OPTS[@]}" "$DEB" "$HOST:/tmp/$NAME"
run ssh "${SSH_OPTS[@]}" "$HOST" "sudo apt-get install -y --reinstall /tmp/$NAME && rm -f /tmp/$NAME"
run ssh "${SSH_OPTS[@]}" "$HOST" "sudo systemctl restart edge-bert.service && systemctl is-active edge-bert.service"
run ssh "${SSH_OPTS[@]}" "$HOST" "sudo edge-bert classify --socket /run/edge-bert/edge-bert.sock 'a gorgeous, moving and beautifully acted film'"
