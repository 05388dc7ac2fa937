#!/usr/bin/env bash
# Regenerates the committed Kotlin bindings (bindings-uniffi/kotlin/src/main/kotlin)
# from the debug cdylib, with the in-workspace uniffi-bindgen (same pinned
# uniffi version as the library). UniFFI writes one file per crate:
#   com/mailsync/mailsync.kt             core records, enums, errors, SecretValue (core/uniffi.toml)
#   com/mailsync/api/mailsync_uniffi.kt  MailSync, its areas, SealKey, functions (uniffi.toml)
# Also writes the Swift bindings to target/uniffi/swift (not committed; no
# Swift toolchain here to compile them).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
# Run from the workspace root: uniffi-bindgen finds each crate's uniffi.toml
# through `cargo metadata`.
cd "$ROOT"
cargo build -p mailsync-uniffi --quiet
LIB="$TARGET/debug/libmailsync_uniffi.so"
BINDGEN="$TARGET/debug/uniffi-bindgen"
OUT="$HERE/kotlin/src/main/kotlin"
rm -rf "$OUT"
mkdir -p "$OUT"
"$BINDGEN" generate --library "$LIB" --language kotlin --no-format --out-dir "$OUT"
"$HERE/kotlin-files.sh" check "$OUT"
"$BINDGEN" generate --library "$LIB" --language swift --no-format --out-dir "$TARGET/uniffi/swift"
echo "regenerated:"
"$HERE/kotlin-files.sh" list | sed "s|^|  ${OUT#"$ROOT"/}/|"
echo "Swift (not compiled): $TARGET/uniffi/swift"
