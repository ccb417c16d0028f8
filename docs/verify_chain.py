#!/usr/bin/env python3
"""Check a pipeline-runs hash chain between two checkpoints, trusting only the public key.

    python verify_chain.py --url https://runs.example --token TOKEN --old old.json \
        [--new new.json] [--public-key HEX]

old.json: a checkpoint you kept (GET /pipelines/v0/audit/checkpoint/), or "genesis" to
check from the first event. new.json: a later one (default: fetched now, and printed, so
you can keep it). The chain is recomputed with hashlib alone; the Ed25519 signatures need
the `cryptography` package (without it they are skipped, and the script says so).
Exit status 0: the new checkpoint extends the old one; 1: it does not (the reason printed).
"""
import argparse
import base64
import hashlib
import json
import sys
import urllib.parse
import urllib.request

FIELDS = ("format", "enterprise_id", "position", "events", "chain_hash", "at")


def get(url, token):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)["content"]


def check_signature(checkpoint, public_key):
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        print("signature NOT checked: install `cryptography` to check it", file=sys.stderr)
        return
    message = "".join(f"{checkpoint[k]}\n" for k in FIELDS).encode()
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(
            bytes.fromhex(checkpoint["signature"]), message)
    except (InvalidSignature, ValueError):
        sys.exit(f"BROKEN: the checkpoint at position {checkpoint['position']} is not signed "
                 "by the key")


def recompute(base, token, old, new):
    """The chain hash and event count after replaying the proof's bytes onto `old`."""
    head, count = bytes.fromhex(old["chain_hash"]), old["events"]
    query = {"from": old["position"], "to": new["position"], "limit": 1000}
    url = f"{base}/pipelines/v0/audit/proof/?{urllib.parse.urlencode(query)}"
    while url:
        page = get(url, token)
        for event in page["events"]:
            canonical = base64.b64decode(event["canonical"])
            # The second line is the event's position: "<length>:<position>".
            if canonical.split(b"\n")[1].partition(b":")[2] != str(event["position"]).encode():
                sys.exit(f"BROKEN: the bytes served for position {event['position']} are not its")
            head = hashlib.sha256(head + canonical).digest()
            count += 1
        url = page["next"]
    return head.hex(), count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token", required=True, help="a token with the audit:read scope")
    parser.add_argument("--old", required=True, help="the kept checkpoint's file, or genesis")
    parser.add_argument("--new", help="a later checkpoint's file (default: fetch one now)")
    parser.add_argument("--public-key", help="the key you trust, hex (default: the old one's)")
    args = parser.parse_args()
    base = args.url.rstrip("/")
    new = (json.load(open(args.new)) if args.new
           else get(f"{base}/pipelines/v0/audit/checkpoint/", args.token))
    if args.old == "genesis":
        old = {"position": 0, "events": 0, "chain_hash": "00" * 32}
    else:
        old = json.load(open(args.old))
    key = args.public_key or old.get("public_key") or new["public_key"]
    for checkpoint in (old, new):
        if "signature" in checkpoint:
            check_signature(checkpoint, key)
    head, count = recompute(base, args.token, old, new)
    if (head, count) != (new["chain_hash"], new["events"]):
        sys.exit(f"BROKEN: the events after position {old['position']} do not recompute to "
                 f"the checkpoint at position {new['position']}")
    if not args.new:
        print(json.dumps(new))
    print(f"OK: position {new['position']} ({count} events) extends position {old['position']}")


if __name__ == "__main__":
    main()
