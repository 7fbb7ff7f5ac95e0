#!/usr/bin/env bash
# Checks the manual pages in docs/man:
#  (a) mandoc -Tlint and groff -wall find nothing to say, and every reference to one of
#      this project's pages (xpmem*) names a page in docs/man;
#  (b) the exported C symbols of the built libxpmem.so (xpmem_*) and the man3 pages match
#      one to one, and each page's ERRORS names exactly the errno values that xpmem.h's
#      comments give for that call;
#  (c) cmake --install puts every page under MANDIR/manN (section 1, the programs' pages,
#      only when the tools are built), and none when XPMEM_INSTALL_MAN is off.
# Usage: check_man.sh SOURCE_DIR BUILD_DIR LIBRARY MANDIR TOOLS_BUILT(1|0) INSTALL_MAN(1|0)
set -euo pipefail
source_dir=$1 build_dir=$2 library=$3 mandir=$4 tools_built=$5 install_man=$6
man_dir=$source_dir/docs/man
header=$source_dir/include/xpmem.h
failures=0
fail() {
    echo "check_man: $*" >&2
    failures=$((failures + 1))
}

shopt -s nullglob
pages=("$man_dir"/*.[1-8])
((${#pages[@]})) || fail "no pages in $man_dir"

# (a) Lint. mandoc's levels, from -Tlint (which reports all of them): every STYLE, WARNING,
# ERROR and UNSUPP message fails, except two STYLE messages about cross-references
# ("referenced manual not found", "outdated mandoc.db"): they depend on which manuals the
# machine has installed, not on the page; references to this project's pages are checked
# below instead. groff must print nothing either.
for page in "${pages[@]}"; do
    status=0
    said=$(mandoc -Tlint "$page" 2>&1) || status=$?
    said=$(grep -v -e 'STYLE: referenced manual not found' -e 'outdated mandoc.db' <<<"$said" || true)
    if [[ -n $said ]] || ((status >= 2)); then
        fail "mandoc -Tlint (exit $status):"$'\n'"$said"
    fi
    said=$(groff -mandoc -wall -z -Tutf8 "$page" 2>&1)
    [[ -z $said ]] || fail "groff -wall on ${page##*/}:"$'\n'"$said"
    # mdoc: .Xr xpmem_make 3; man(7): .BR xpmem_make (3)
    while read -r name section; do
        [[ -f $man_dir/$name.$section ]] ||
            fail "${page##*/} refers to $name($section), which docs/man lacks"
    done < <(sed -nE -e 's/^\.Xr (xpmem[-_a-z0-9]*) ([1-8]).*/\1 \2/p' \
        -e 's/^\.[BI]R (xpmem[-_a-z0-9]*) \(([1-8])\).*/\1 \2/p' "$page")
done

# (b) Exported C symbols against man3 pages.
mapfile -t symbols < <(nm -D --defined-only "$library" | awk '{print $NF}' | sed 's/@.*//' |
    grep '^xpmem_' | sort -u)
((${#symbols[@]})) || fail "no xpmem_* symbol exported by $library"
for symbol in "${symbols[@]}"; do
    [[ -f $man_dir/$symbol.3 ]] || fail "exported $symbol has no page docs/man/$symbol.3"
done
errno_names=$(printf '#include <errno.h>\n' | cpp -dM | awk '$2 ~ /^E[A-Z0-9]+$/ {print $2}' |
    sort -u)
errnos_in() { grep -oE '\bE[A-Z0-9]+\b' | sort -u | comm -12 - <(echo "$errno_names"); }
# What the header's first comment says of every call (ENOMEM, EIO).
every_call=$(awk '/\*\//{print; exit} {print}' "$header" | errnos_in)
for page in "$man_dir"/*.3; do
    name=$(basename "$page" .3)
    if ! printf '%s\n' "${symbols[@]}" | grep -qx "$name"; then
        fail "docs/man/$name.3 documents no exported symbol"
        continue
    fi
    grep -qE "^\.(Nm|Fn) $name\b" "$page" || fail "docs/man/$name.3 does not name $name"
    # The comment block right above the prototype "... name(" in the header.
    header_errnos=$( (awk -v name="$name" '
        /^\/\*/ {comment = ""; inside = 1}
        inside {comment = comment $0 "\n"; if ($0 ~ /\*\//) inside = 0; next}
        $0 ~ "[ *]" name "\\(" {printf "%s", comment; exit}
        NF {comment = ""}' "$header"; echo "$every_call") | errnos_in)
    page_errnos=$(sed -nE '/^\.S[hH] ERRORS/,/^\.S[hH] /p' "$page" | errnos_in)
    [[ -n $header_errnos ]] || fail "xpmem.h has no errno for $name"
    if [[ $header_errnos != "$page_errnos" ]]; then
        fail "ERRORS of $name.3 and xpmem.h's comment differ (< header only, > page only):"$'\n'"$(
            diff <(echo "$header_errnos") <(echo "$page_errnos") | grep '^[<>]')"
    fi
done

# (c) The installed tree.
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build_dir" --prefix "$prefix" >/dev/null
for page in "${pages[@]}"; do
    name=${page##*/} section=${page##*.}
    installed=$prefix/$mandir/man$section/$name
    if [[ $install_man == 1 && ($section != 1 || $tools_built == 1) ]]; then
        cmp -s "$page" "$installed" || fail "$name is not installed as $mandir/man$section/$name"
    elif [[ -e $installed ]]; then
        fail "$name is installed though it should not be"
    fi
done

((failures == 0)) || { echo "check_man: $failures failure(s)" >&2; exit 1; }
echo "check_man: ${#pages[@]} pages lint clean; ${#symbols[@]} exported symbols, each with a page; installed under $mandir"
