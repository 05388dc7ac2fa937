#!/usr/bin/env bash
# The Kotlin files uniffi-bindgen must generate, one per crate with UniFFI
# metadata in libmailsync_uniffi.so (package = that crate's uniffi.toml).
#   kotlin-files.sh list        prints them (relative paths)
#   kotlin-files.sh check DIR   fails unless DIR holds exactly these files
set -euo pipefail
FILES=(
    com/mailsync/mailsync.kt            # crate mailsync (core/uniffi.toml)
    com/mailsync/api/mailsync_uniffi.kt # crate mailsync-uniffi (bindings-uniffi/uniffi.toml)
)
case "${1:-}" in
    list) printf '%s\n' "${FILES[@]}" ;;
    check)
        actual="$(cd "$2" && find . -type f | sed 's|^\./||' | LC_ALL=C sort)"
        expected="$(printf '%s\n' "${FILES[@]}" | LC_ALL=C sort)"
        if [ "$actual" != "$expected" ]; then
            echo "FAIL: uniffi-bindgen wrote other Kotlin files than expected in $2" >&2
            echo "expected:" >&2; echo "$expected" | sed 's/^/  /' >&2
            echo "got:" >&2; echo "$actual" | sed 's/^/  /' >&2
            echo "(a crate's uniffi.toml was not found, a package changed, or a crate was added)" >&2
            exit 1
        fi
        ;;
    *) echo "usage: $0 list | check DIR" >&2; exit 2 ;;
esac
