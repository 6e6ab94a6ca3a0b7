#!/usr/bin/env bash
# Checks that the tokens sessionward sends upstream are standard HS256 JWTs:
# a real token, produced through the real proxy by examples/capture_token.rs,
# must verify with an independent library (PyJWT, through examples/verify.py),
# and must NOT verify with a wrong secret or with one byte of its payload changed.
#
#   bash .ci/verify_token.sh      (from anywhere; prints PASS or FAIL last)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() {
    echo "FAIL: verify_token: $*" >&2
    echo "FAIL: verify_token"
    exit 1
}

if ! python3 -c 'import jwt' 2>/dev/null; then
    echo "verify_token: installing PyJWT" >&2
    python3 -m pip install --quiet pyjwt || fail "cannot install PyJWT"
fi

out=$(cargo run --quiet --example capture_token) || fail "cargo run --example capture_token failed"
SECRET=$(printf '%s\n' "$out" | sed -n 's/^SECRET=//p')
TOKEN=$(printf '%s\n' "$out" | sed -n 's/^TOKEN=//p')
[[ -n "$SECRET" && -n "$TOKEN" ]] || fail "capture_token printed no SECRET/TOKEN line: $out"

# 1. The genuine token verifies and carries the session the app wrote.
claims=$(python3 examples/verify.py --secret "$SECRET" --expect-sid-present \
    --expect-data '{"user":"ci","n":1}' "$TOKEN") || fail "the genuine token did not verify"
echo "verify_token: genuine token verified; claims:"
printf '%s\n' "$claims"

# Runs verify.py and requires it to reject the token with exit code 1 and a
# signature error (not a crash, not a usage error).
expect_rejected() {
    local what=$1 secret=$2 token=$3 rc=0 err
    err=$(python3 examples/verify.py --secret "$secret" "$token" 2>&1 >/dev/null) || rc=$?
    [[ $rc -eq 1 ]] || fail "$what: expected exit 1, got $rc ($err)"
    grep -qi 'signature' <<<"$err" || fail "$what: rejected for the wrong reason: $err"
    echo "verify_token: $what: rejected as expected ($err)"
}

# 2. Same token, wrong secret (as long as the real one, so only the key differs).
expect_rejected "wrong secret" "${SECRET%?}$([[ ${SECRET: -1} == A ]] && echo B || echo A)" "$TOKEN"

# 3. One byte of the decoded payload changed ("ci" -> "cj"), re-encoded, old signature kept.
TAMPERED=$(python3 - "$TOKEN" <<'PY'
import base64, sys
header, payload, sig = sys.argv[1].split(".")
raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
i = raw.index(b'"ci"') + 2
raw[i] ^= 0x03  # 'i' -> 'j': still valid JSON, one byte different
new = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
assert new != payload
print(".".join([header, new, sig]))
PY
) || fail "could not build the tampered token"
expect_rejected "payload altered by one byte" "$SECRET" "$TAMPERED"

echo "PASS: verify_token: sessionward tokens verify with PyJWT; wrong secret and tampered payload are rejected"
