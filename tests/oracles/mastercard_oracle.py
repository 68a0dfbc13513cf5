"""An independent judge of c2p-enroll's Mastercard requests and payloads, built on Mastercard's
own Python client libraries (PyPI mastercard-oauth1-signer and mastercard-client-encryption,
installed by `scripts/tools mastercard-py`). Driven by tests/it/oracles.rs.

Usage: mastercard_oracle.py COMMAND < request.json > answer.json

  verify-oauth  {"certificate": PEM path, "private_key": PEM path or null,
                 "requests": [{"method", "url", "body_b64", "authorization"}]}
                -> {"results": [{"ok", "problems": [...], "signature_method", "base_string"}]}
                The library recomputes the body hash and the signature base string (its
                OAuth.get_base_string over the header's oauth_* parameters), then `cryptography`
                verifies the signature with the certificate's public key (PKCS#1 v1.5 or PSS with
                a 32-byte salt). With a private key, an RSA-SHA256 signature must also equal the
                library's own signature of its base string (PKCS#1 v1.5 is deterministic).
  sign-oauth    {"private_key", "consumer_key", "signature_method": "RSA-SHA256" | "RSA-PSS",
                 "requests": [{"method", "url", "body_b64"}]} -> {"headers": [...]}
                OAuth.get_authorization_header, as a client built on the library signs.
  encrypt       {"certificate", "kid": null or a fingerprint to write instead of the default,
                 "payloads": [JSON text]} -> {"results": [{"body", "jwe", "kid"}]}
                jwe_encryption.encrypt_payload with the whole body encrypted ($ -> $) into
                "encryptedValue", as Processing-style clients configure it.
  decrypt       {"private_key", "bodies": [JSON text]}
                -> {"results": [{"payload": JSON text, "header": {...}}]}
                jwe_encryption.decrypt_payload of {"encryptedValue": JWE} back to the body. Note
                that the library checks neither the GCM tag nor the kid.

Errors go to stderr without payloads; the exit status is 1.
"""

import base64
import json
import sys
import urllib.parse

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

import oauth1.coreutils as oauth_util
from oauth1.oauth import OAuth, SignatureMethod
from client_encryption import jwe_encryption
from client_encryption.jwe_encryption_config import JweEncryptionConfig

OAUTH_PARAMS = {
    "oauth_body_hash",
    "oauth_consumer_key",
    "oauth_nonce",
    "oauth_signature",
    "oauth_signature_method",
    "oauth_timestamp",
    "oauth_version",
}
FIELD = "encryptedValue"


def load_private_key(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def load_public_key(certificate_path):
    with open(certificate_path, "rb") as f:
        data = f.read()
    if data.startswith(b"-----BEGIN "):
        return x509.load_pem_x509_certificate(data).public_key()
    return x509.load_der_x509_certificate(data).public_key()


def parse_authorization(header):
    """`OAuth k="v",k="v"` as a dict of raw values; problems as a list."""
    problems = []
    if not header.startswith("OAuth "):
        return {}, ["the header does not start with 'OAuth '"]
    params = {}
    for part in header[len("OAuth "):].split(","):
        key, sep, value = part.partition("=")
        if not sep or len(value) < 2 or value[0] != '"' or value[-1] != '"':
            problems.append("unparsable parameter %r" % key)
            continue
        if key in params:
            problems.append("parameter %s twice" % key)
        params[key] = value[1:-1]
    return params, problems


def padding_for(method):
    if method == SignatureMethod.RSA_PSS_SHA256.value:
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return padding.PKCS1v15()


def verify_one(request, public_key, private_key):
    params, problems = parse_authorization(request["authorization"])
    body = base64.b64decode(request["body_b64"])
    keys = set(params)
    if keys != OAUTH_PARAMS:
        problems.append(
            "parameters differ from the library's: missing %s, extra %s"
            % (sorted(OAUTH_PARAMS - keys), sorted(keys - OAUTH_PARAMS))
        )
    method = params.get("oauth_signature_method")
    if method not in {m.value for m in SignatureMethod}:
        problems.append("signature method %r is not one the library knows" % method)
    if params.get("oauth_version") != "1.0":
        problems.append("oauth_version is not 1.0")
    nonce = params.get("oauth_nonce", "")
    if len(nonce) != 16 or not nonce.isalnum():
        problems.append("oauth_nonce is not 16 alphanumerics")
    if not params.get("oauth_timestamp", "").isdigit():
        problems.append("oauth_timestamp is not a number")
    expected_hash = oauth_util.base64_encode(oauth_util.sha256_encode(body))
    if params.get("oauth_body_hash") != expected_hash:
        problems.append("oauth_body_hash is not the library's hash of the body")

    signed = {k: v for k, v in params.items() if k != "oauth_signature"}
    base_string = OAuth.get_base_string(request["url"], request["method"], signed)
    signature_text = urllib.parse.unquote(params.get("oauth_signature", ""))
    if oauth_util.percent_encode(signature_text) != params.get("oauth_signature"):
        problems.append("oauth_signature is not percent-encoded as the library encodes it")
    try:
        signature = base64.b64decode(signature_text, validate=True)
        public_key.verify(
            signature, base_string.encode("utf-8"), padding_for(method), hashes.SHA256()
        )
    except (InvalidSignature, ValueError):
        problems.append("the signature does not verify over the library's base string")
    if private_key is not None and method == SignatureMethod.RSA_SHA256.value:
        ours = OAuth.sign_message(base_string, private_key, SignatureMethod.RSA_SHA256)
        if ours != signature_text:
            problems.append("the signature differs from the library's own RSA-SHA256 signature")
    return {
        "ok": not problems,
        "problems": problems,
        "signature_method": method,
        "base_string": base_string,
    }


def verify_oauth(request):
    public_key = load_public_key(request["certificate"])
    private_key = request.get("private_key")
    private_key = load_private_key(private_key) if private_key else None
    return {"results": [verify_one(r, public_key, private_key) for r in request["requests"]]}


def sign_oauth(request):
    key = load_private_key(request["private_key"])
    method = SignatureMethod(request["signature_method"])
    headers = []
    for r in request["requests"]:
        body = base64.b64decode(r["body_b64"]).decode("utf-8")
        headers.append(
            OAuth.get_authorization_header(
                r["url"], r["method"], body, request["consumer_key"], key, signature_method=method
            )
        )
    return {"headers": headers}


def jwe_config(certificate=None, private_key=None, kid=None):
    conf = {
        "paths": {"$": {"toEncrypt": {"$": "$"}, "toDecrypt": {FIELD: "$"}}},
        "encryptedValueFieldName": FIELD,
    }
    if certificate:
        conf["encryptionCertificate"] = certificate
    if kid:
        conf["encryptionKeyFingerprint"] = kid
    if private_key:
        conf["decryptionKey"] = private_key
    return JweEncryptionConfig(conf)


def encrypt(request):
    config = jwe_config(certificate=request["certificate"], kid=request.get("kid"))
    results = []
    for payload in request["payloads"]:
        body = jwe_encryption.encrypt_payload(payload, config)
        results.append(
            {"body": json.dumps(body), "jwe": body[FIELD], "kid": config.encryption_key_fingerprint}
        )
    return {"results": results}


def decrypt(request):
    config = jwe_config(private_key=request["private_key"])
    results = []
    for text in request["bodies"]:
        jwe = json.loads(text)[FIELD]
        header = json.loads(base64.urlsafe_b64decode(jwe.split(".")[0] + "=="))
        payload = jwe_encryption.decrypt_payload(text, config)
        if not isinstance(payload, (dict, list)) or FIELD in payload:
            raise SystemExit("the library did not decrypt a body")
        results.append({"payload": json.dumps(payload), "header": header})
    return {"results": results}


COMMANDS = {
    "verify-oauth": verify_oauth,
    "sign-oauth": sign_oauth,
    "encrypt": encrypt,
    "decrypt": decrypt,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        sys.exit("usage: mastercard_oracle.py {%s} < request.json" % "|".join(COMMANDS))
    try:
        answer = COMMANDS[sys.argv[1]](json.load(sys.stdin))
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - report the kind, never a payload
        sys.exit("%s failed: %s" % (sys.argv[1], type(e).__name__))
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
