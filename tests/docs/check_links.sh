#!/usr/bin/env bash
# Checks the documentation's links: every relative link in README.md and docs/*.md must
# reach a file, and every #anchor must be the id of a heading in its target (the ids
# GitHub gives headings). Links inside code are not links. Usage: check_links.sh [ROOT]
set -euo pipefail
root=$(cd "${1:-$(dirname "$0")/../..}" && pwd)
export LC_ALL=C

# A Markdown file without its fenced code blocks.
outside_fences() { awk '/^[[:space:]]*```/ { fenced = !fenced; next } !fenced' "$1"; }

# The ids of a file's headings, one per line; repeated ones get -1, -2, ... as on GitHub.
heading_ids() {
    outside_fences "$1" | sed -n 's/^#\{1,6\}[[:space:]]\{1,\}//p' | tr '[:upper:]' '[:lower:]' |
        sed 's/[^a-z0-9 _-]//g; s/ /-/g' | awk '{ n = seen[$0]++; print (n ? $0 "-" n : $0) }'
}

# The targets of a file's inline links and images, code spans left out.
link_targets() {
    # shellcheck disable=SC2016 # the backquotes are Markdown's, not the shell's
    outside_fences "$1" | sed 's/`[^`]*`//g' | grep -oE '\]\([^) ]+\)' | sed 's/^](//; s/)$//' ||
        true
}

broken=0
checked=0
for file in "$root/README.md" "$root"/docs/*.md; do
    while IFS= read -r target; do
        case $target in *://* | mailto:*) continue ;; esac
        checked=$((checked + 1))
        path=${target%%#*}
        anchor=
        [[ $target == *#* ]] && anchor=${target#*#}
        resolved=$file
        [[ -n $path ]] && resolved=$(dirname "$file")/$path
        if [[ ! -e $resolved ]]; then
            echo "${file#"$root"/}: $target: no such file"
            broken=$((broken + 1))
        elif [[ -n $anchor ]] && ! heading_ids "$resolved" | grep -qxF -- "$anchor"; then
            echo "${file#"$root"/}: $target: no heading with id '$anchor'"
            broken=$((broken + 1))
        fi
    done < <(link_targets "$file")
done
echo "check_links: $checked relative links, $broken broken"
[[ $broken -eq 0 ]]
