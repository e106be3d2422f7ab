#!/usr/bin/env bash
# Install edge-bert on a board over ssh and restart the service.
#
#   cross/deploy.sh [--dry-run] [--arch aarch64|armv7] [--deb FILE] user@host
#   cross/deploy.sh [--dry-run] --model-only BUNDLE user@host
#
# Without --deb it builds the package first (cross/package.sh ARCH --release).
# Then: copies the .deb to the board with scp, installs it with
# `sudo apt-get install -y ./edge-bert_*.deb` (which pulls in adduser and
# runs the maintainer scripts: system user, enable, restart), restarts the
# service, waits for it to be active, and classifies one text through the
# socket on the board as a smoke test.
#
# --model-only BUNDLE updates only the model (no package, no restart): the
# bundle directory (signed: edge-bert-quantize sign) is copied into a new
# slot /var/lib/edge-bert/models/NAME-vVERSION-TIME, the `current` link is
# flipped to it atomically (a new link renamed over the old), and
# `edge-bert reload` makes the running server load it (signature, version,
# warm-up, self-test, memory budget; the old model serves until the swap).
# If the server refuses it, the link goes back to the previous slot and the
# script exits 1. The service must run with
# EDGE_BERT_OPTS="--model /var/lib/edge-bert/models/current --trusted-keys /etc/edge-bert/keys".
# EDGE_BERT_SLOTS and EDGE_BERT_SOCKET change the board's slot directory and
# socket path (tests/it/reload.rs runs the whole flow against a local server).
#
# --dry-run prints every command it would run, one per line, prefixed with
# "+ ", and runs none of them (not even the build).
#
# Examples:
#   cross/deploy.sh pi@raspberrypi.local                      # Pi 4/5, 64-bit OS
#   cross/deploy.sh --arch armv7 pi@pi3.local                 # 32-bit Pi OS
#   cross/deploy.sh --deb target-deb/edge-bert_0.1.0_arm64.deb ubuntu@jetson
#   cross/deploy.sh --dry-run pi@raspberrypi.local
#   cross/deploy.sh --model-only models/sentiment-int8 pi@raspberrypi.local
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() {
  echo "usage: cross/deploy.sh [--dry-run] [--arch aarch64|armv7] [--deb FILE] user@host" >&2
  echo "       cross/deploy.sh [--dry-run] --model-only BUNDLE user@host" >&2
  exit 2
}
DRY=""; ARCH=aarch64; DEB=""; HOST=""; BUNDLE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --arch) [ $# -ge 2 ] || usage; ARCH="$2"; shift ;;
    --deb) [ $# -ge 2 ] || usage; DEB="$2"; shift ;;
    --model-only) [ $# -ge 2 ] || usage; BUNDLE="$2"; shift ;;
    -h|--help) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

if [ -n "$BUNDLE" ]; then
  [ -z "$DEB" ] || { echo "error: --model-only and --deb do not go together" >&2; exit 2; }
  [ -f "$BUNDLE/manifest.json" ] || { echo "error: $BUNDLE is not a bundle (no manifest.json)" >&2; exit 1; }
  [ -f "$BUNDLE/manifest.sig" ] || echo "warning: $BUNDLE is not signed; a server with --trusted-keys refuses it" >&2
  MVERSION="$(sed -n 's/^  "version": *\([0-9][0-9]*\).*/\1/p' "$BUNDLE/manifest.json" | head -1)"
  MNAME="$(sed -n 's/^  "name": *"\([A-Za-z0-9._-]*\)".*/\1/p' "$BUNDLE/manifest.json" | head -1)"
  [ -n "$MNAME" ] || { echo "error: $BUNDLE/manifest.json has no plain name" >&2; exit 1; }
  SLOTS="${EDGE_BERT_SLOTS:-/var/lib/edge-bert/models}"
  SOCK="${EDGE_BERT_SOCKET:-/run/edge-bert/edge-bert.sock}"
  case "$SLOTS$SOCK" in *[!A-Za-z0-9/._-]*) echo "error: bad slot or socket path" >&2; exit 2 ;; esac
  SLOT="$SLOTS/$MNAME-v${MVERSION:-0}-$(date -u +%Y%m%dT%H%M%SZ)"
  TMP="/tmp/edge-bert-slot-$$"
  SSH_OPTS=(-o BatchMode=yes -o ConnectTimeout=10)
  run scp -r "${SSH_OPTS[@]}" "$BUNDLE" "$HOST:$TMP"
  run ssh "${SSH_OPTS[@]}" "$HOST" "sudo mkdir -p $SLOTS && sudo mv $TMP $SLOT && sudo chmod -R a+rX $SLOT"
  # Flip, reload, and flip back if the server refuses the new model.
  run ssh "${SSH_OPTS[@]}" "$HOST" "cd $SLOTS && PREV=\$(readlink current || true) && sudo ln -sfn $SLOT current.new && sudo mv -T current.new current && if sudo edge-bert reload --socket $SOCK; then echo 'serving $SLOT'; else echo \"refused; current goes back to \$PREV\" >&2; if [ -n \"\$PREV\" ]; then sudo ln -sfn \"\$PREV\" current.new && sudo mv -T current.new current; fi; exit 1; fi"
  run ssh "${SSH_OPTS[@]}" "$HOST" "sudo edge-bert classify --socket $SOCK 'a gorgeous, moving and beautifully acted film'"
  exit 0
fi

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
