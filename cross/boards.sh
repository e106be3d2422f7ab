# The boards edge-bert builds for: one table, sourced by the cross/ scripts.
#
#   . "$ROOT/cross/boards.sh"
#   board aarch64 || usage      # sets the variables below; fails if unknown
#   board_for_deb_arch arm64    # the same, from a Debian architecture
#
# Sets:
#   BOARD        aarch64 | armv7 (the name the scripts take)
#   TARGET       Rust target triple
#   GLIBC_FLOOR  oldest glibc the binary must run on (zig links against it)
#   GCC          Debian's cross gcc package
#   PREFIX       cross binutils prefix (strip, objdump)
#   QEMU_BIN     qemu-user binary
#   QEMU         qemu-user command with the cross glibc as library root
#   DEB_ARCH     Debian architecture of the package
#   MACHINE      what `readelf -h` prints as the ELF machine
#
# aarch64: Raspberry Pi 4/5 and Jetson, glibc 2.27 (Jetson Nano's L4T,
#          Ubuntu 18.04). armv7: 32-bit Raspberry Pi OS with NEON
#          (thumbv7neon, so rustc and tract may assume NEON), glibc 2.28
#          (Debian buster).

board() {
  case "$1" in
    aarch64)
      BOARD=aarch64; TARGET=aarch64-unknown-linux-gnu; GLIBC_FLOOR=2.27
      GCC=gcc-aarch64-linux-gnu; PREFIX=aarch64-linux-gnu; QEMU_BIN=qemu-aarch64
      DEB_ARCH=arm64; MACHINE=AArch64 ;;
    armv7)
      BOARD=armv7; TARGET=thumbv7neon-unknown-linux-gnueabihf; GLIBC_FLOOR=2.28
      GCC=gcc-arm-linux-gnueabihf; PREFIX=arm-linux-gnueabihf; QEMU_BIN=qemu-arm
      DEB_ARCH=armhf; MACHINE=ARM ;;
    *) return 1 ;;
  esac
  QEMU="$QEMU_BIN -L /usr/$PREFIX"
}

board_for_deb_arch() {
  case "$1" in
    arm64) board aarch64 ;;
    armhf) board armv7 ;;
    *) return 1 ;;
  esac
}

# highest_glibc BIN: the highest GLIBC_ symbol version BIN needs, e.g. 2.27
# (uses the board's cross objdump; call `board` first).
highest_glibc() {
  "$PREFIX-objdump" -T "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -1
}

# glibc_ok VERSION FLOOR: true when VERSION is at most FLOOR.
glibc_ok() {
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -1)" = "$2" ]
}

# The packages whose tests run on the boards (cross/build.sh --tests,
# cross/test.sh): the binary crate and the runtime's library crates.
TEST_PACKAGES="-p edge-bert -p edge-bert-kernels -p edge-bert-model -p edge-bert-wire"
