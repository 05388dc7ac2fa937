#!/usr/bin/env bash
# Builds the UniFFI cdylib, checks the committed Kotlin bindings (one file per
# crate, see kotlin-files.sh) are current, generates Swift (not compiled: no
# Swift toolchain), and runs the JUnit suite on the JVM with Maven (including
# the tests against the local stack, which it starts with tests/stack/up if
# needed; it never stops it). Exits non-zero on any failure.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
cd "$ROOT"

echo "== bindings-uniffi: cargo build -p mailsync-uniffi (debug)"
cargo build -p mailsync-uniffi --quiet
LIB="$TARGET/debug/libmailsync_uniffi.so"
BINDGEN="$TARGET/debug/uniffi-bindgen"

echo "== bindings-uniffi: one TLS provider (cargo tree -i aws-lc-rs)"
if cargo tree -p mailsync-uniffi -i aws-lc-rs >/dev/null 2>&1; then
    echo "FAIL: aws-lc-rs is in the dependency graph of mailsync-uniffi" >&2
    cargo tree -p mailsync-uniffi -i aws-lc-rs >&2 || true
    exit 1
fi

echo "== bindings-uniffi: stale-bindings check (Kotlin, one file per crate: kotlin-files.sh)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$BINDGEN" generate --library "$LIB" --language kotlin --no-format --out-dir "$TMP/kotlin" >/dev/null
"$HERE/kotlin-files.sh" check "$TMP/kotlin"
if ! diff -ru "$HERE/kotlin/src/main/kotlin" "$TMP/kotlin" >"$TMP/diff.txt"; then
    head -n 60 "$TMP/diff.txt" >&2
    echo "FAIL: the committed Kotlin bindings are stale (the Rust API changed)." >&2
    echo "      Regenerate them with: bindings-uniffi/generate.sh  (then commit the result)" >&2
    exit 1
fi

echo "== bindings-uniffi: Swift bindings -> $TARGET/uniffi/swift (generated, not compiled)"
"$BINDGEN" generate --library "$LIB" --language swift --no-format --out-dir "$TARGET/uniffi/swift" >/dev/null

echo "== bindings-uniffi: local test stack (tests/stack/up; cheap when already running)"
"$ROOT/tests/stack/up"
STACK_DIR="${MAILSYNC_STACK_DIR:-$ROOT/tests/stack/run}"

echo "== bindings-uniffi: mvn test (JUnit on the JVM, loads $LIB)"
cd "$HERE/kotlin"
LOG="$TMP/mvn.log"
if ! mvn -B -ntp test "-Dmailsync.lib.dir=$TARGET/debug" \
        "-Dmailsync.stack.json=$STACK_DIR/stack.json" "-Dmailsync.stack.bin=$ROOT/tests/stack/bin" \
        >"$LOG" 2>&1; then
    cat "$LOG"
    echo "FAIL: mvn test failed" >&2
    exit 1
fi
grep -E "Tests run:|BUILD SUCCESS" "$LOG" | sed 's/^\[INFO\] //'
