#!/usr/bin/env python3
"""An independent check of kompress's promotion evidence (tests/evidence.rs runs it beside
`kompress verify`): the DSSE envelope is verified by securesystemslib (PyPI; the Secure Systems
Lab's DSSE and signer code, on pyca/cryptography), the key id is computed by cryptography, and
the subjects are hashed here with hashlib. No kompress code is involved.

  python3 hack/verify_evidence.py ENVELOPE PUBKEY.pem MODEL_DIR

Prints one JSON line; exit 0 when the signature verifies, the statement is an in-toto v1
statement whose subjects are the files in MODEL_DIR with those sha256 digests, and the
predicate's verdict is Passed; exit 1 otherwise (the reason is in the JSON).
"""
import base64
import hashlib
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey


def main(envelope_path: str, pub_path: str, model_dir: str) -> dict:
    pub = serialization.load_pem_public_key(Path(pub_path).read_bytes())
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    keyid = hashlib.sha256(spki).hexdigest()
    key = SSlibKey.from_crypto(pub, keyid=keyid)
    env = Envelope.from_dict(json.loads(Path(envelope_path).read_text()))
    try:
        env.verify([key], 1)
    except Exception as e:  # securesystemslib's VerificationError, or a malformed signature
        return {"ok": False, "reason": f"signature: {type(e).__name__}: {e}", "keyid": keyid}
    if env.payload_type != "application/vnd.in-toto+json":
        return {"ok": False, "reason": f"payloadType {env.payload_type}"}
    st = json.loads(env.payload)
    if st.get("_type") != "https://in-toto.io/Statement/v1":
        return {"ok": False, "reason": f"_type {st.get('_type')}"}
    if st.get("predicateType") != "https://kompress.dev/attestation/evaluation/v1":
        return {"ok": False, "reason": f"predicateType {st.get('predicateType')}"}
    for s in st["subject"]:
        path = Path(model_dir) / s["name"]
        if not path.is_file():
            return {"ok": False, "reason": f"subject {s['name']} missing"}
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != s["digest"]["sha256"]:
            return {"ok": False, "reason": f"subject {s['name']}: sha256 {actual}, signed {s['digest']['sha256']}"}
    pred = st["predicate"]
    failed = [c["name"] for c in pred.get("checks", []) if not c.get("passed")]
    if pred.get("verdict") != "Passed" or failed:
        return {"ok": False, "reason": f"verdict {pred.get('verdict')}, failed checks {failed}"}
    return {"ok": True, "keyid": keyid, "subjects": [s["name"] for s in st["subject"]],
            "checks": len(pred.get("checks", [])), "payload_sha256": hashlib.sha256(base64.b64decode(
                json.loads(Path(envelope_path).read_text())["payload"])).hexdigest()}


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    out = main(*sys.argv[1:])
    print(json.dumps(out))
    sys.exit(0 if out["ok"] else 1)
