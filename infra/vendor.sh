#!/bin/sh
# Refresh the dashboard's vendored front-end libraries from npm at the versions pinned in
# api/static/vendor/VERSIONS (`make vendor`). No CDN at run time: the files are served
# from /static/vendor/ by the API itself. Each package's tarball integrity (npm's sha512)
# is checked by npm pack; the sha256 of every copied file is written to SHA256SUMS.
set -eu
cd "$(dirname "$0")/.."
VENDOR=api/static/vendor
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# VERSIONS: "package version file-in-package..." per line; '#' starts a comment.
grep -v '^\s*#' "$VENDOR/VERSIONS" | grep -v '^\s*$' | while read -r package version files; do
    dir="$TMP/$package"
    mkdir -p "$dir"
    tarball=$(cd "$dir" && npm pack --silent "$package@$version" | tail -n 1)
    tar -xzf "$dir/$tarball" -C "$dir"
    for file in $files; do
        cp "$dir/package/$file" "$VENDOR/$(basename "$file")"
    done
    licence=$(cd "$dir/package" && ls | grep -i -m 1 '^licen[cs]e')
    cp "$dir/package/$licence" "$VENDOR/LICENSE.$package"
    echo "$package@$version: $files"
done
(cd "$VENDOR" && sha256sum $(ls | grep -v -e '^SHA256SUMS$' -e '^README.md$' -e '^VERSIONS$' | sort) > SHA256SUMS)
