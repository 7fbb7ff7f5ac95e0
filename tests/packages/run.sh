#!/usr/bin/env bash
# The Debian packages, as a site would use them: builds them with dpkg-buildpackage from a
# copy of the checkout (tracked and untracked files, not ignored ones), fails on any lintian
# error, installs libxpmem0, libxpmem-dev, xpmem-dkms and xpmem-tools, builds and runs the
# classic C client and the C++ consumer against them through pkg-config and find_package
# (tests/install/check_clients.sh), runs the installed tools, then purges the packages and
# fails if any file or directory under /usr, /etc or /var/lib/dkms differs from before the
# install. Packages left by an earlier run are purged first, and again on exit.
#
#   tests/packages/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
packages=(libxpmem0 libxpmem-dev xpmem-dkms xpmem-tools)
trees=(/usr /etc /var/lib/dkms)

scripts/install-deps.sh dpkg-dev debhelper dh-dkms dkms lintian

apt=(apt-get -y -q -o DPkg::Lock::Timeout=300)
say() {
    echo "packages: [${SECONDS} s] $*"
}
# Purges whichever of the packages dpkg knows (installed, half-installed or config-files).
purge() {
    local known
    # dpkg-query fails for packages it has never seen.
    known=$({ dpkg-query -W -f='${db:Status-Status} ${Package}\n' "${packages[@]}" 2>/dev/null ||
        true; } | awk '$1 != "not-installed" { print $2 }')
    if [[ -n $known ]]; then
        # shellcheck disable=SC2086
        "${apt[@]}" purge $known
    fi
}
purge
work=$(mktemp -d /tmp/xpmem-packages.XXXXXX)
trap 'purge >/dev/null; rm -rf "$work"' EXIT

say "building"
mkdir "$work/source"
git ls-files -z --cached --others --exclude-standard | tar -c --null -T - | tar -x -C "$work/source"
(cd "$work/source" && dpkg-buildpackage -us -uc -b -j"$(nproc)" >"$work/build.log" 2>&1) || {
    tail -n 50 "$work/build.log"
    exit 1
}
version=$(dpkg-parsechangelog -l debian/changelog -S Version)
changes=$(echo "$work"/xpmem_"$version"_*.changes)

say "lintian (fails on errors)"
lintian --fail-on error "$changes"

debs=()
for package in "${packages[@]}"; do
    debs+=("$(echo "$work/${package}_${version}"_*.deb)")
done
# DKMS makes its module signing key at its first build (docs/packaging.md); the key is
# DKMS's, not the package's, and stays for every later module.
list_trees() {
    find "${trees[@]}" 2>/dev/null | grep -Ev '^/var/lib/dkms/mok\.(key|pub)$' | LC_ALL=C sort
}
list_trees >"$work/before"
# No headers for the running kernel, or no module support at all: DKMS says so and the
# install succeeds anyway.
say "installing"
"${apt[@]}" install --no-install-recommends "${debs[@]}"
say "dkms status:"
dkms status -m xpmem
# DKMS built and installed the module for every kernel whose headers are here.
for build in /lib/modules/*/build; do
    [[ -e $build ]] || continue
    kernel=$(basename "$(dirname "$build")")
    if ! dkms status -m xpmem -k "$kernel" | grep -q ": installed"; then
        echo "packages: DKMS did not install the module for $kernel" >&2
        exit 1
    fi
done

# Only the system's own search paths: the clients must find the packages' files in /usr.
unset LD_LIBRARY_PATH PKG_CONFIG_PATH CMAKE_PREFIX_PATH
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
# Packaged programs and the library carry no run path: /usr/lib/<multiarch> is searched anyway.
for package in libxpmem0 xpmem-tools; do
    for file in $(dpkg -L "$package"); do
        if [[ -f $file ]] && readelf -d "$file" 2>/dev/null | grep -qE 'R(UN)?PATH'; then
            echo "packages: $file has a run path" >&2
            exit 1
        fi
    done
done
say "clients against /usr/lib/$multiarch/libxpmem.so.0"
if ! [[ $(pkg-config --variable=libdir xpmem) -ef /usr/lib/$multiarch ]]; then
    echo "packages: pkg-config finds xpmem.pc elsewhere than the package's" >&2
    exit 1
fi
tests/install/check_clients.sh /usr
/usr/bin/xpmem-bench --help >/dev/null
if [[ -x /usr/bin/xpmem-info ]]; then
    /usr/bin/xpmem-info
fi

say "purging"
"${apt[@]}" purge "${packages[@]}"
list_trees >"$work/after"
if ! diff "$work/before" "$work/after"; then
    echo "packages: the purge left the tree different from before the install (above)" >&2
    exit 1
fi
say "built, lintian-clean, installed, used and purged without leftovers"
