"""schemathesis hooks for tests/test_fuzz.py.

An Idempotency-Key means "the same logical request": a generator that sends one key with
two different requests (its coverage phase sends the same boundary values, e.g. "0" or
255 x "0", to every operation) is rightly refused with a 422. OpenAPI cannot say "unique
per request", so each valid generated key is made unique when the case is generated,
keeping it valid and keeping its length where it is at the 255-character boundary;
invalid keys are kept as they are, so the negative cases still test the validation.

Valid values of two query parameters are mapped the same way, invalid ones kept: `wait`
to 0 (long-polls have their own tests; the pass stays short) and a run list's `cursor`
to "" (the first page: any cursor the service did not make is rightly a 400).
The headers dict is edited in place: schemathesis keeps a reference to it for its
missing-authentication check.

Consistency-Token: the coverage phase sends boundary values such as "0", "" or "true" and
then judges the answer as if they were valid (its revalidation of this header ignores the
documented pattern), so the service's rightful 400 fails ST202. A token that misses the
pattern is therefore replaced by a valid one; tests/test_consistency_token.py checks the
400 for malformed tokens.
"""
import re
import uuid

import schemathesis

from service.web.consistency import HEADER as TOKEN_HEADER
from service.web.consistency import TOKEN_PATTERN
from service.web.idempotency import KEY_HEADER, KEY_PATTERN

_KEY_OK = re.compile(KEY_PATTERN)
_KEY_MAX = 255
_TOKEN_OK = re.compile(TOKEN_PATTERN)


def unique_key(key: str) -> str:
    """A key as valid as `key` (and as long, near the limit) that no other case shares."""
    unique = uuid.uuid4().hex
    if len(key) + 1 + len(unique) <= _KEY_MAX:
        return f"{key}-{unique}"
    return key[:len(key) - len(unique)] + unique  # keeps the first character and the length


@schemathesis.hook
def map_case(ctx, case):
    key = (case.headers or {}).get(KEY_HEADER)
    if isinstance(key, str) and _KEY_OK.fullmatch(key):
        case.headers[KEY_HEADER] = unique_key(key)
    query = case.query or {}
    if _number_in(query.get("wait"), 0, 30):
        query["wait"] = 0
    if isinstance(query.get("cursor"), str) and len(query["cursor"]) <= 4096:
        query["cursor"] = ""
    token = (case.headers or {}).get(TOKEN_HEADER)
    if isinstance(token, str) and not _TOKEN_OK.fullmatch(token):
        case.headers[TOKEN_HEADER] = "1.0"
    return case



def _number_in(value, low: float, high: float) -> bool:
    try:
        return low <= float(value) <= high
    except (TypeError, ValueError):
        return False
