#!/usr/bin/env bash
# Vigil set-up: everything `make test` / `make monitor` need, from a bare
# Debian 12 machine to a ready tree.  Idempotent, and quick when nothing is
# left to do (it runs before every `make test` and `make monitor`).
#
#   scripts/setup.sh [STEP...]     STEP: apt venv bpf helpers mounts (default: these)
#                                        vm (`make test-kernels` only: QEMU,
#                                        virtme-ng, the matrix's kernels)
#
# Environment:
#   PYTHON=python3.11   interpreter that creates .venv (default: python3, >= 3.11)
#   VIGIL_SETUP_FORCE=1 reinstall the venv package even if pyproject.toml is unchanged
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

VENV="$ROOT/.venv"
STAMP="$VENV/.vigil-install-stamp"
PYTHON=${PYTHON:-python3}

APT_PACKAGES=(
    clang llvm                 # BPF compiler (clang -target bpf)
    libbpf-dev libbpf1         # bpf_helpers.h etc.; libbpf.so.1 for the ctypes binding
    bpftool                    # vmlinux.h from the kernel's BTF
    libelf-dev zlib1g-dev
    make gcc pkg-config
    systemtap-sdt-dev          # <sys/sdt.h> for the USDT test program
    iproute2 util-linux procps
)

say()  { printf '[setup] %s\n' "$*"; }
die()  { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Root, or sudo when there is one; empty when already root.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@" || die "'$*' needs root (sudo -n failed): run the set-up as root"
    else
        die "'$*' needs root: run the set-up as root"
    fi
}

# --- (a) Debian packages ----------------------------------------------------
step_apt() {
    command -v dpkg-query >/dev/null 2>&1 \
        || die "dpkg-query not found: the set-up supports Debian 12 (bookworm) and derivatives only"

    local wanted=("${APT_PACKAGES[@]}")
    # A Debian system python3 creates venvs only with python3-venv (ensurepip).
    if [[ ! -x "$VENV/bin/python" ]] && command -v "$PYTHON" >/dev/null 2>&1 \
        && [[ $(command -v "$PYTHON") == /usr/bin/* ]] \
        && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        wanted+=(python3-venv)
    fi

    # One dpkg-query for all: prints "name status" for every known package.
    local installed missing=() p
    installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${wanted[@]}" 2>/dev/null || true)
    for p in "${wanted[@]}"; do
        grep -qx "$p installed" <<<"$installed" || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        say "apt packages: all present"
        return
    fi

    say "apt packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
    as_root apt-get "${apt_opts[@]}" update -qq </dev/null \
        || die "apt-get update failed"
    as_root apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" </dev/null \
        || die "apt-get install ${missing[*]} failed"
}

# Packages of the `vm` step: QEMU without KVM, depmod for the unpacked
# kernels' modules, the static busybox of virtme-ng's initramfs, file(1) for
# its kernel version probe.
VM_APT_PACKAGES=(qemu-system-x86 kmod busybox-static file)

# Debian packages in $@ that are not installed yet, installed.
apt_install_missing() {
    local installed missing=() p
    installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null || true)
    for p in "$@"; do
        grep -qx "$p installed" <<<"$installed" || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return
    fi
    say "apt packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
    as_root apt-get "${apt_opts[@]}" update -qq </dev/null \
        || die "apt-get update failed"
    as_root apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" </dev/null \
        || die "apt-get install ${missing[*]} failed"
}

# --- (b) Python venv with the package (editable) ----------------------------
venv_ok() {
    [[ -x "$VENV/bin/python" ]] \
        && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

step_venv() {
    if ! venv_ok; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=... to a Python >= 3.11)"
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || die "$PYTHON is $("$PYTHON" -V 2>&1); Vigil needs Python >= 3.11 (set PYTHON=...)"
        say "venv: creating .venv with $("$PYTHON" -V 2>&1)"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" || die "python -m venv failed (on Debian's python3: apt-get install python3-venv)"
    fi

    # Reinstall only when pyproject.toml, the interpreter or the tree's place changed.
    local want have=""
    want=$({ sha256sum pyproject.toml; "$VENV/bin/python" -VV; echo "$ROOT"; } | sha256sum | cut -d' ' -f1)
    [[ -f "$STAMP" ]] && have=$(<"$STAMP")
    if [[ "$want" == "$have" && -x "$VENV/bin/vigil" && -z "${VIGIL_SETUP_FORCE:-}" ]]; then
        say "venv: up to date"
        return
    fi

    say "venv: pip install -e '.[test,dev]'"
    rm -f "$STAMP"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q -e '.[test,dev]' </dev/null \
        || die "pip install -e '.[test,dev]' failed"
    echo "$want" >"$STAMP"
}

# --- (c) BPF objects (incremental) -------------------------------------------
# `make -q` answers "up to date?" without building, so a no-op run stays silent.
build_with_make() {  # label what make-args...
    local label=$1 what=$2; shift 2
    if make -q --no-print-directory "$@" >/dev/null 2>&1; then
        say "$label: up to date"
        return
    fi
    say "$label: building $what"
    make --no-print-directory "$@" || die "$label build failed (make $*)"
}

step_bpf() {
    [[ -r /sys/kernel/btf/vmlinux ]] \
        || die "/sys/kernel/btf/vmlinux missing: the kernel has no BTF (CONFIG_DEBUG_INFO_BTF), CO-RE needs it"
    command -v clang >/dev/null 2>&1 || die "clang not found (run the apt step: scripts/setup.sh apt)"
    build_with_make bpf "build/bpf/*.bpf.o" -C "$ROOT/bpf"
}

# --- (d) helper binaries (rules in the top-level Makefile) -------------------
step_helpers() {
    build_with_make helpers "build/bin/" -C "$ROOT" helpers
}

# --- (e) tracefs and bpffs ---------------------------------------------------
ensure_mount() {  # fstype dir statfs-type-name
    local type=$1 dir=$2 magic=$3
    if [[ $(stat -f -c %T "$dir" 2>/dev/null) == "$magic" ]]; then
        return
    fi
    say "mounts: mounting $type on $dir"
    as_root mkdir -p "$dir"
    as_root mount -t "$type" "$type" "$dir" || die "could not mount $type on $dir"
}

step_mounts() {
    ensure_mount tracefs /sys/kernel/tracing tracefs
    ensure_mount bpf /sys/fs/bpf bpf_fs
    say "mounts: tracefs and bpffs present"
}

# --- (f) the kernel matrix: QEMU, virtme-ng, Debian's kernels -----------------
step_vm() {
    apt_install_missing "${VM_APT_PACKAGES[@]}"
    say "vm: qemu, kmod, busybox-static present"
    venv_ok || die "no .venv yet: run the venv step first"
    # The pin lives in pyproject.toml's `vm` extra; installed alone, so the
    # editable package and its stamp are left as they are.
    local want
    want=$("$VENV/bin/python" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["vm"])')
    if "$VENV/bin/python" -c "import importlib.metadata as m, sys; from packaging.requirements import Requirement as R; r = R(sys.argv[1]); sys.exit(not r.specifier.contains(m.version(r.name)))" "$want" >/dev/null 2>&1; then
        say "vm: $want present"
    else
        say "vm: pip install $want"
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q "$want" </dev/null \
            || die "pip install $want failed"
    fi
    bash "$ROOT/scripts/kernels.sh" fetch
}

# One set-up at a time per tree (e.g. `make -j test lint`, or two shells).
if command -v flock >/dev/null 2>&1; then
    exec 9>"${TMPDIR:-/tmp}/vigil-setup-$(printf '%s' "$ROOT" | sha256sum | cut -c1-16).lock"
    flock 9
fi

steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(apt venv bpf helpers mounts)
for s in "${steps[@]}"; do
    case $s in
        apt | venv | bpf | helpers | mounts | vm) "step_$s" ;;
        *) die "unknown step '$s' (steps: apt venv bpf helpers mounts vm)" ;;
    esac
done
