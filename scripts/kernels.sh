#!/usr/bin/env bash
# The kernels of `make test-kernels`: Debian's own packages, fetched with
# `apt-get download` and unpacked under build/kernels/ (nothing is installed
# on the host).  Cached: a kernel already unpacked is not fetched again.
#
#   scripts/kernels.sh fetch     fetch and unpack every kernel of the matrix
#   scripts/kernels.sh list      print "<name> <vmlinuz>" for every unpacked kernel
#
# The matrix (name: apt package of the generic flavour; the -cloud flavour
# lacks the 9p modules the guest needs for its root filesystem):
#   6.1   linux-image-amd64 from bookworm            (Debian 12's own kernel)
#   6.12  linux-image-amd64 from bookworm-backports
# Both come from the Debian archive this host's apt already uses; the
# backports suite is added only to a private apt configuration under
# build/kernels/apt, never to the host's sources.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KDIR="$ROOT/build/kernels"
APTDIR="$KDIR/apt"
CODENAME=bookworm

say() { printf '[kernels] %s\n' "$*"; }
die() { printf '[kernels] ERROR: %s\n' "$*" >&2; exit 1; }

# name suite: the matrix, one kernel a line.
MATRIX=(
    "6.1 $CODENAME"
    "6.12 $CODENAME-backports"
)

# Options that point apt at the private configuration only.
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APTDIR/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::Cache=$APTDIR/cache"
    -o "Dir::State::status=$APTDIR/status"
    -o "APT::Get::List-Cleanup=0"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"
)

# The Debian archive the host already uses for $CODENAME (no host is named here).
archive_uri() {
    apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null \
        | awk -v r="$CODENAME" '$2 == r && $3 == "main" { print $1; exit }'
}

private_apt() {
    local uri
    uri=$(archive_uri)
    [[ -n $uri ]] || die "no '$CODENAME main' source in the host's apt configuration (apt-get indextargets)"
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
    : >"$APTDIR/status"
    printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
        "$uri" "$CODENAME" "$uri" "$CODENAME-backports" >"$APTDIR/sources.list"
    say "apt-get update (private lists: $CODENAME, $CODENAME-backports)"
    apt-get "${APT_OPTS[@]}" update -qq </dev/null >/dev/null || die "apt-get update of the private lists failed"
}

# The versioned image package that linux-image-amd64 of SUITE depends on.
image_package() {  # suite
    apt-cache "${APT_OPTS[@]}" show "linux-image-amd64/$1" 2>/dev/null \
        | awk -F': ' '/^Depends:/ { n = split($2, d, /, */); for (i = 1; i <= n; i++) if (d[i] ~ /^linux-image-[0-9]/) { sub(/ .*/, "", d[i]); print d[i]; exit } }'
}

unpacked() {  # name -> vmlinuz path, if unpacked and ready
    local d="$KDIR/$1" v
    [[ -f $d/.ready ]] || return 1
    v=$(<"$d/.ready")
    [[ -f $d/$v ]] && echo "$d/$v"
}

fetch_one() {  # name suite
    local name=$1 suite=$2 pkg deb d="$KDIR/$1" kver
    if unpacked "$name" >/dev/null; then
        say "$name: cached ($(basename "$(unpacked "$name")"))"
        return
    fi
    # Lists are refreshed once a run, and only when a kernel is missing.
    [[ -n ${APT_FRESH:-} ]] || { private_apt; APT_FRESH=1; }
    pkg=$(image_package "$suite")
    [[ -n $pkg ]] || die "$name: no linux-image-amd64 in $suite"
    say "$name: apt-get download $pkg"
    (cd "$APTDIR/cache/archives" && apt-get "${APT_OPTS[@]}" download -qq "$pkg" </dev/null) \
        || die "$name: apt-get download $pkg failed"
    deb=$(ls -t "$APTDIR/cache/archives/${pkg}_"*.deb | head -1)
    rm -rf "$d"
    mkdir -p "$d"
    dpkg-deb -x "$deb" "$d"
    # The image's modules directory names the kernel release (…/lib/modules/<kver>).
    local moddir
    moddir=$(compgen -G "$d/lib/modules/*" || compgen -G "$d/usr/lib/modules/*" || true)
    [[ -n $moddir ]] || die "$name: $deb has no lib/modules"
    kver=$(basename "$moddir")
    [[ -f $d/boot/vmlinuz-$kver ]] || die "$name: $deb has no boot/vmlinuz-$kver"
    # Debian's packages ship no modules.dep: generate it (kmod's depmod), so
    # virtme-ng can put the 9p and virtio modules into the guest's initramfs.
    depmod -a -b "${moddir%/lib/modules/*}" "$kver" || die "$name: depmod failed"
    rm -f "$deb"
    echo "boot/vmlinuz-$kver" >"$d/.ready"
    say "$name: $kver unpacked in build/kernels/$name"
}

case ${1:-fetch} in
    fetch)
        command -v depmod >/dev/null 2>&1 || die "depmod not found (apt-get install kmod)"
        for entry in "${MATRIX[@]}"; do
            # shellcheck disable=SC2086
            fetch_one $entry
        done
        ;;
    list)
        for entry in "${MATRIX[@]}"; do
            name=${entry%% *}
            v=$(unpacked "$name") || die "kernel $name not fetched: run scripts/kernels.sh fetch"
            echo "$name $v"
        done
        ;;
    *) die "usage: scripts/kernels.sh fetch|list" ;;
esac
