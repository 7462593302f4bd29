#!/usr/bin/env python3
"""Prints an HS256 JWT for PostgREST, as Supabase Auth would issue one (standard library only).

usage: jwt.py SECRET [TENANT] [ROLE]     (ROLE defaults to authenticated; valid for 24 hours)
"""

import base64
import hashlib
import hmac
import json
import sys
import time


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(secret, claims):
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(signature)}"


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__.strip())
    claims = {"sub": "demo-user", "role": argv[3] if len(argv) > 3 else "authenticated",
              "exp": int(time.time()) + 24 * 3600}
    if len(argv) > 2 and argv[2]:
        claims["tenant_id"] = argv[2]
    print(sign(argv[1], claims))


if __name__ == "__main__":
    main(sys.argv)
