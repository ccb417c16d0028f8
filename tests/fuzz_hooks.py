"""schemathesis hooks for tests/test_fuzz.py.

An Idempotency-Key means "the same logical request": a generator that sends the value "0"
with two different bodies is rightly refused with a 422. OpenAPI cannot say "unique per
request", so valid generated keys get a unique suffix when the case is generated (they
stay valid); invalid ones are kept, so the negative cases still test the validation.
The headers dict is edited in place: schemathesis keeps a reference to it for its
missing-authentication check.
"""
import re
import uuid

import schemathesis

_VALID_SHORT = re.compile(r"[\x21-\x7e]{1,200}")


@schemathesis.hook
def map_case(ctx, case):
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and _VALID_SHORT.fullmatch(key):
        case.headers["Idempotency-Key"] = f"{key}-{uuid.uuid4().hex}"
    return case
