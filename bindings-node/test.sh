#!/usr/bin/env bash
# Builds the Node binding (debug, shared target/), checks that the generated
# index.d.ts / index.js match what is committed, brings up the local test
# stack (tests/stack/up) and runs the node:test suite.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
start=$SECONDS

# 1. Install the pinned CLI (package-lock.json) only when needed.
lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -d node_modules || "$(cat node_modules/.mailsync-lock-hash 2>/dev/null || true)" != "$lock_hash" ]]; then
  npm ci --no-audit --no-fund
  echo "$lock_hash" > node_modules/.mailsync-lock-hash
fi

# 2. Build, regenerating index.d.ts and index.js; compare with the committed copies.
stale_dir="$(mktemp -d)"
trap 'rm -rf "$stale_dir"' EXIT
for f in index.d.ts index.js; do
  if [[ -f "$f" ]]; then cp "$f" "$stale_dir/$f"; fi
done
npx napi build --platform --manifest-path Cargo.toml
stale=0
for f in index.d.ts index.js; do
  if [[ ! -f "$stale_dir/$f" ]] || ! cmp -s "$f" "$stale_dir/$f"; then
    echo "error: bindings-node/$f is stale: the build regenerated it differently. Review and commit the new file." >&2
    if [[ -f "$stale_dir/$f" ]]; then diff -u "$stale_dir/$f" "$f" | head -60 >&2 || true; fi
    stale=1
  fi
done
if git -C "$here" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
  && git -C "$here" ls-files --error-unmatch index.d.ts >/dev/null 2>&1; then
  git -C "$here" diff --exit-code -- index.d.ts index.js || stale=1
fi
[[ $stale == 0 ]] || exit 1

# 3. The local test stack (OAuth provider, Dovecot, Postfix): cheap when it
#    already runs; never stopped here. The OAuth and Test & Enable suites fail
#    (instead of skipping) when it is missing.
"$here/../tests/stack/up"
export MAILSYNC_NODE_REQUIRE_STACK=1

# 4. The suite (node's runner prints its summary: "# pass N", "# fail N").
node --test tests/
echo "bindings-node: build + tests took $((SECONDS - start))s"
