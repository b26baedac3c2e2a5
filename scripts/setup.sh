#!/usr/bin/env bash
# Kiln's one setup script for a fresh Debian 12 (bookworm) machine, as root.
#
#   scripts/setup.sh run     install what Kiln needs, build it, boot the built-in demo guest
#   scripts/setup.sh test    install what the tests need (QEMU 10 from bookworm-backports for
#                            the test rig), run the whole test suite
#   scripts/setup.sh bench   install the peers (QEMU 10, strace), run the benchmarks
#   scripts/setup.sh deps    only install build and test dependencies
#
# Everything the project needs is installed here; nothing may depend on what was
# installed by hand. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root (or sudo) to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    say "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Add the bookworm-backports suite (for QEMU 10), pointing at the same Debian mirror the
# machine already uses, unless some source already provides it.
enable_backports() {
    if apt-cache policy 2>/dev/null | grep -q "bookworm-backports"; then return 0; fi
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || die "cannot find the Debian mirror in the apt sources to add bookworm-backports"
    say "enabling bookworm-backports from $uri"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uri" | as_root tee /etc/apt/sources.list.d/kiln-backports.sources >/dev/null
    as_root apt-get update -qq
    APT_UPDATED=1
}

ensure_rust() {
    if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null; then
        # Debian 12's own cargo (1.65) is older than the rust-vmm crates need (1.85).
        apt_install curl ca-certificates
        say "installing the Rust toolchain with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
}

check_kvm() {
    [ -e /dev/kvm ] || die "/dev/kvm is missing: Kiln needs KVM (load kvm_intel or kvm_amd; enable virtualization)"
}

build_deps() {
    # gcc/libc6-dev: the linker rustc uses; binutils: as/ld/objcopy assemble the guests;
    # util-linux: setpriv for the permission test; coreutils: mknod.
    apt_install gcc libc6-dev binutils util-linux coreutils
    ensure_rust
}

# QEMU 10 from bookworm-backports (bookworm's own is 7.2).
install_qemu10() {
    enable_backports
    if ! qemu-system-x86_64 --version 2>/dev/null | grep -q "version 1[0-9]\."; then
        say "installing qemu-system-x86 10 from bookworm-backports"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-x86
    fi
    # qemu-img and qemu-io 10: the oracle the disk-image tests compare Kiln's images with.
    if ! qemu-img --version 2>/dev/null | grep -q "version 1[0-9]\."; then
        say "installing qemu-utils 10 from bookworm-backports"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-utils
    fi
}

deps() {
    build_deps
    # The test rig (crates/testrig) boots a Debian kernel with kvm-amd under QEMU 10 (TCG)
    # when this machine has no hardware virtualization. lz4: unpack the kernel's vmlinux;
    # xz-utils: compressed modules. The kernel and busybox are fetched with apt-get download.
    # e2fsprogs: mkfs.ext4 -d builds the virtio-blk tests' root disks, debugfs reads them;
    # iproute2: the virtio-net tests configure the TAP devices they create.
    apt_install lz4 xz-utils e2fsprogs iproute2
    install_qemu10
    # seabios: the BIOS `kiln run --bios` boots by default (QEMU 10 pulls in the
    # backports build; named here so the BIOS tests never depend on QEMU's packaging).
    # xorriso: builds the BIOS install test's CD (crates/testrig/src/install_iso.rs).
    apt_install seabios xorriso
}

bench_deps() {
    deps
    apt_install strace
}

case "${1:-}" in
    deps) deps ;;
    run)
        build_deps
        check_kvm
        say "building kiln (release)"
        cargo build --release --locked -p kiln
        say "booting the built-in demo guest: target/x86_64-unknown-linux-gnu/release/kiln run"
        exec target/x86_64-unknown-linux-gnu/release/kiln run
        ;;
    test)
        deps
        check_kvm
        say "running the test suite"
        cargo test --workspace --locked
        ;;
    bench)
        bench_deps
        check_kvm
        cargo run --release --locked -p xtask -- bench "${@:2}"
        ;;
    *)
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
