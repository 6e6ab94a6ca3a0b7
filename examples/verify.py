#!/usr/bin/env python3
"""Verify a sessionward session token with PyJWT, the way an app should.

    python3 examples/verify.py --secret SECRET TOKEN
    SESSIONWARD_SECRET=SECRET python3 examples/verify.py TOKEN

Checks the HS256 signature, `exp` (and that `iat` is not in the future),
`iss == "sessionward"` and that every claim sessionward sends is present with
the right type. Prints the claims as JSON on stdout and exits 0; on any failure
prints the reason on stderr and exits 1 (2 for a bad command line).

    --expect-data JSON     also fail unless claims.data equals this JSON object
    --expect-sid-present   also fail unless claims.sid is a string (a live session)
    --leeway SECONDS       clock skew allowed for exp/iat (default 0)

Needs PyJWT: python3 -m pip install pyjwt
"""

import argparse
import json
import os
import sys

try:
    import jwt
except ImportError:
    sys.exit("verify.py: PyJWT is not installed (python3 -m pip install pyjwt)")

ISSUER = "sessionward"

# Claims PyJWT can require itself: they are never null.
REQUIRED_BY_PYJWT = ["iss", "iat", "exp", "new", "data", "method", "path"]

# Every claim and the JSON types it may have (sid and expires are null
# without a session, so PyJWT's `require`, which rejects null, cannot check them).
CLAIM_TYPES = {
    "iss": (str,),
    "iat": (int,),
    "exp": (int,),
    "sid": (str, type(None)),
    "new": (bool,),
    "data": (dict,),
    "expires": (int, type(None)),
    "method": (str,),
    "path": (str,),
}


class Failed(Exception):
    """Verification failed; the message says why."""


def verify(token, secret, leeway=0):
    """Returns the verified claims of `token`, or raises Failed."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],  # never let the token choose the algorithm
            issuer=ISSUER,
            leeway=leeway,
            options={"require": REQUIRED_BY_PYJWT},
        )
    except jwt.PyJWTError as e:
        raise Failed(f"{type(e).__name__}: {e}") from None

    for name, types in CLAIM_TYPES.items():
        if name not in claims:
            raise Failed(f"claim {name!r} is missing")
        value = claims[name]
        # bool is a subclass of int in Python: keep true/false out of int claims.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise Failed(f"claim {name!r} has the wrong type: {value!r}")
    return claims


def canonical(value):
    """JSON text that compares equal only for equal JSON values (True != 1)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Verify a sessionward session token with PyJWT.")
    parser.add_argument("token", metavar="TOKEN", help="the value of the x-session request header")
    parser.add_argument(
        "--secret",
        default=os.environ.get("SESSIONWARD_SECRET"),
        help="signing.secret of the proxy (default: $SESSIONWARD_SECRET)",
    )
    parser.add_argument("--expect-data", metavar="JSON", help="fail unless claims.data equals this JSON object")
    parser.add_argument(
        "--expect-sid-present", action="store_true", help="fail unless claims.sid is set (a live session)"
    )
    parser.add_argument("--leeway", type=int, default=0, metavar="SECONDS", help="clock skew allowed (default 0)")
    args = parser.parse_args(argv)

    if not args.secret:
        parser.error("no secret: pass --secret or set SESSIONWARD_SECRET")
    expected_data = None
    if args.expect_data is not None:
        try:
            expected_data = json.loads(args.expect_data)
        except ValueError as e:
            parser.error(f"--expect-data is not JSON: {e}")

    try:
        claims = verify(args.token.strip(), args.secret, args.leeway)
        if expected_data is not None and canonical(claims["data"]) != canonical(expected_data):
            raise Failed(f"data is {canonical(claims['data'])}, expected {canonical(expected_data)}")
        if args.expect_sid_present and claims["sid"] is None:
            raise Failed("sid is null (no session), expected a session id")
    except Failed as e:
        print(f"verify.py: token rejected: {e}", file=sys.stderr)
        return 1

    print(json.dumps(claims, indent=2, sort_keys=True, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
