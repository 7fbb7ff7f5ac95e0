#!/usr/bin/env bash
# Installs what building and testing need from Debian's archive (Debian 12 or newer),
# plus any packages named as arguments. Does nothing when everything is already there,
# so it is cheap to call every time.
set -euo pipefail
packages=(g++ cmake make pkgconf libgtest-dev libgmock-dev util-linux libbenchmark-dev
    libfmt-dev nlohmann-json3-dev libcxxopts-dev gnuplot-nox liburing-dev mandoc groff-base "$@")
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
    apt-get update -qq
    # INITRD=No: kernel images installed for test guests do not regenerate the host's
    # initramfs.
    INITRD=No DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
