#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (src/fuzz/): one directory per
target, one small file per seed. Run from anywhere; it rewrites only the
files it names, so regression seeds added by hand (named `regress-*`) stay.

    python3 tests/fuzz-corpus/generate.py
"""
import base64
import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = os.path.join(HERE, "..", "fixtures", "keys")
# The HS256 secret of src/fuzz/token.rs.
SECRET = b"fuzz secret, at least thirty-two bytes long"
NOW = 1_700_000_000


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- codec: raw client bytes (masked frames) --------------------------------

def frame(opcode, payload=b"", fin=True, rsv=0, masked=True, mask=b"\x11\x22\x33\x44",
          length=None, wide=0):
    n = len(payload) if length is None else length
    out = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    m = 0x80 if masked else 0
    if wide == 0 and n < 126:
        out += bytes([m | n])
    elif wide <= 1 and n <= 0xFFFF:
        out += bytes([m | 126]) + struct.pack(">H", n)
    else:
        out += bytes([m | 127]) + struct.pack(">Q", n)
    if masked:
        out += mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    else:
        out += payload
    return out


TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10
hb = b'["1","2","phoenix","heartbeat",{}]'
codec = {
    "text-hello": frame(TEXT, b"hello"),
    "text-empty": frame(TEXT, b""),
    "heartbeat-v2": frame(TEXT, hb),
    "heartbeat-flood": frame(TEXT, hb) * 20,
    "fragmented-text-around-ping": frame(TEXT, b"hel", fin=False) + frame(PING, b"p")
    + frame(CONT, b"lo"),
    "fragmented-binary-3": frame(BINARY, b"\x00\x01", fin=False) + frame(CONT, b"\x02", fin=False)
    + frame(CONT, b"\x03"),
    "fragmented-empty-first": frame(TEXT, b"", fin=False) + frame(CONT, b"x"),
    "utf8-split-across-fragments": frame(TEXT, "é".encode()[:1], fin=False)
    + frame(CONT, "é".encode()[1:]),
    "utf8-invalid-across-fragments": frame(TEXT, b"\xc3", fin=False) + frame(CONT, b"("),
    "len-125": frame(BINARY, b"a" * 125),
    "len-126-16bit": frame(TEXT, b"a" * 126),
    "len-127-16bit": frame(TEXT, b"b" * 127),
    "len-300-16bit": frame(BINARY, bytes(range(256)) + b"x" * 44),
    "len-5-as-16bit": frame(TEXT, b"hello", wide=1),
    "len-5-as-64bit": frame(TEXT, b"hello", wide=2),
    "len-64bit-huge": frame(TEXT, b"", length=1 << 63),
    "len-64bit-max": frame(BINARY, b"", length=(1 << 64) - 1),
    "len-16bit-65535-partial": frame(BINARY, b"", length=65535) + b"\x00" * 10,
    "len-65537-64bit-header": frame(BINARY, b"", length=65537),
    "close-1000-reason": frame(CLOSE, struct.pack(">H", 1000) + b"bye"),
    "close-empty": frame(CLOSE),
    "close-one-byte": frame(CLOSE, b"\x03"),
    "close-1005": frame(CLOSE, struct.pack(">H", 1005)),
    "close-999": frame(CLOSE, struct.pack(">H", 999)),
    "close-1012": frame(CLOSE, struct.pack(">H", 1012)),
    "close-5000": frame(CLOSE, struct.pack(">H", 5000)),
    "close-4999": frame(CLOSE, struct.pack(">H", 4999)),
    "close-bad-utf8-reason": frame(CLOSE, struct.pack(">H", 1000) + b"\xff"),
    "close-then-text": frame(CLOSE, struct.pack(">H", 1001)) + frame(TEXT, b"after"),
    "invalid-utf8-text": frame(TEXT, b"\xff\xfe"),
    "invalid-utf8-surrogate": frame(TEXT, b"\xed\xa0\x80"),
    "invalid-utf8-overlong": frame(TEXT, b"\xc0\x80"),
    "unmasked-text": frame(TEXT, b"a", masked=False),
    "rsv1-text": frame(TEXT, b"a", rsv=4),
    "rsv3-ping": frame(PING, b"", rsv=1),
    "opcode-3": frame(3, b"a"),
    "opcode-11": frame(11, b""),
    "ping-not-fin": frame(PING, b"p", fin=False),
    "ping-126-16bit": frame(PING, b"p" * 126),
    "ping-5-as-16bit": frame(PING, b"ppppp", wide=1),
    "pong-unsolicited": frame(PONG, b"x"),
    "ping-flood": frame(PING, b"12345678") * 40,
    "continuation-without-start": frame(CONT, b"x"),
    "text-inside-fragmented": frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"),
    "mask-zero": frame(TEXT, b"zero", mask=b"\x00\x00\x00\x00"),
    "truncated-first-byte": b"\x81",
    "truncated-16bit-length": b"\x81\xfe\x00",
    "truncated-mask": b"\x81\x85\x01\x02",
    "random-http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}
for name, data in codec.items():
    write("codec", name, data)

# --- serializers: text frames (decoded as V1 and as V2) ---------------------

ser = {
    "v1-join": '{"topic":"patterns:stats","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}',
    "v1-number-ref": '{"topic":"patterns:stats","event":"phx_join","payload":{},"ref":1}',
    "v1-null-ref": '{"topic":"t","event":"e","payload":{},"ref":null,"join_ref":null}',
    "v1-heartbeat": '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}',
    "v1-bool-ref": '{"topic":"t","event":"e","payload":{},"ref":true}',
    "v1-object-join-ref": '{"topic":"t","event":"e","payload":{},"ref":"1","join_ref":{}}',
    "v1-missing-payload": '{"topic":"t","event":"e","ref":"1"}',
    "v1-number-topic": '{"topic":5,"event":"e","payload":{},"ref":"1"}',
    "v1-escaped-keys": '{"to\\u0070ic":"t","ev\\u0065nt":"e","payload":{},"r\\u0065f":"1"}',
    "v1-duplicate-topic": '{"topic":"a","topic":"b","event":"e","payload":{},"ref":"1"}',
    "v1-extra-keys": '{"topic":"t","event":"e","payload":[1,2],"ref":"1","x":{"y":[]}}',
    "v1-whitespace": ' \n\t{ "topic" : "t" , "event" : "e" , "payload" : "p" , "ref" : -0 } \r\n',
    "v1-truncated": '{"topic":"t","event":"e","payload":{},"ref":"1"',
    "v1-trailing-garbage": '{"topic":"t","event":"e","payload":{},"ref":"1"}x',
    "v2-join": '["1","1","patterns:stats","phx_join",{}]',
    "v2-heartbeat": '[null,"5","phoenix","heartbeat",{}]',
    "v2-number-refs": '[1,2,"t","e",{}]',
    "v2-arity-4": '["1","2","t","e"]',
    "v2-arity-6": '["1","2","t","e",{},6]',
    "v2-arity-0": '[]',
    "v2-bool-join-ref": '[true,"2","t","e",{}]',
    "v2-topic-number": '["1","2",3,"e",{}]',
    "huge-number-refs": '[1e400,123456789012345678901234567890,"t","e",{}]',
    "negative-exp-ref": '{"topic":"t","event":"e","payload":{},"ref":-1.5E-400}',
    "unicode-escape-refs": '["\\u0031","\\ud83d\\ude00","t\\u00e9","\\u0065",{}]',
    "lone-surrogate-ref": '["\\ud800","\\udc00","t","e",{}]',
    "lone-surrogate-topic": '["1","2","\\ud800","e",{}]',
    "control-char-in-string": '["1","2","t\x01","e",{}]',
    "nul-escape-topic": '["1","2","a\\u0000b","e",{}]',
    "nested-payload-200": '["1","2","t","e",' + "[" * 200 + "]" * 200 + "]",
    "nested-payload-2000": '["1","2","t","e",' + "[" * 2000 + "]" * 2000 + "]",
    "big-number-payload": '["1","2","t","e",1e999999]',
    "string-payload": '["1","2","t","e","x"]',
    "empty": "",
    "null": "null",
    "number": "42",
    "bad-json": "{nope",
    "utf8-topic": '["1","2","salle:été","é",{"é":"é"}]',
}
for name, text in ser.items():
    write("serializers", name, text)

# --- binary: V2 binary pushes ------------------------------------------------

def push(jr, r, topic, event, payload=b"", kind=0, sizes=None):
    fields = [jr, r, topic, event]
    s = sizes or [len(f) for f in fields]
    return bytes([kind] + s) + b"".join(fields) + payload

binary = {
    "push": push(b"1", b"2", b"rooms:a", b"ev", b"\x01\x02\x03"),
    "push-empty-fields": push(b"", b"", b"", b""),
    "push-no-payload": push(b"12", b"13", b"patterns:stats", b"get_local_stats"),
    "size-past-end": push(b"1", b"2", b"abc", b"e", sizes=[1, 1, 200, 1]),
    "ref-past-end": push(b"1", b"", b"", b"", sizes=[1, 9, 0, 0]),
    "event-past-end": push(b"1", b"2", b"t", b"ev", sizes=[1, 1, 1, 3]),
    "all-255": bytes([0, 255, 255, 255, 255]) + b"x" * 20,
    "truncated-header": bytes([0, 1, 2]),
    "only-kind": bytes([0]),
    "empty": b"",
    "kind-1-reply": push(b"1", b"2", b"t", b"e", kind=1),
    "kind-2-broadcast": push(b"", b"", b"t", b"e", kind=2),
    "kind-255": push(b"1", b"2", b"t", b"e", kind=255),
    "invalid-utf8-topic": push(b"1", b"2", b"\xff\xfe", b"e"),
    "invalid-utf8-join-ref": push(b"\xc3", b"2", b"t", b"e"),
    "invalid-utf8-ref": push(b"1", b"\xed\xa0\x80", b"t", b"e"),
    "quote-in-ref": push(b'"', b'\\"', b"t", b"e"),
    "max-fields": push(b"j" * 255, b"r" * 255, b"t" * 255, b"e" * 255, b"p"),
}
for name, data in binary.items():
    write("binary", name, data)

# --- events: producer events ------------------------------------------------

events = {
    "pattern-detected-full": {"type": "pattern_detected", "data": {
        "pattern_type": "spike", "confidence": 0.9, "source": "s3", "severity": "high",
        "metadata": {"a": [1, {"b": None}]}, "vsm_impact": {"s1": 1}, "timestamp": "t"}},
    "pattern-detected-empty": {"type": "pattern_detected", "data": {}},
    "pattern-detected-no-data": {"type": "pattern_detected"},
    "pattern-detected-null-fields": {"type": "pattern_detected", "data": {
        "pattern_type": None, "confidence": None, "metadata": None}},
    "patterns-indexed": {"type": "patterns_indexed", "data": {"count": 3, "deduplicated": True,
                                                             "source": "x"}},
    "patterns-indexed-count-u64-max": {"type": "patterns_indexed", "data": {
        "count": 18446744073709551615, "deduplicated": -3}},
    "patterns-indexed-negative-count": {"type": "patterns_indexed", "data": {"count": -1}},
    "patterns-indexed-float-count": {"type": "patterns_indexed", "data": {"count": 1.5}},
    "pattern-matched-context": {"type": "pattern_matched", "data": {
        "pattern_id": 7, "confidence": 1e308, "type": "t",
        "context": {"type": 1, "confidence": 2, "source": 3, "subsystem": 4, "x": 5}}},
    "pattern-matched-context-array": {"type": "pattern_matched", "data": {"context": [1]}},
    "temporal": {"type": "temporal_pattern_detected", "data": {
        "pattern_type": "p", "confidence": 0, "time_window": "1m", "frequency": 2}},
    "algedonic-081": {"type": "algedonic_signal", "data": {"intensity": 0.81, "type": "pain"}},
    "algedonic-080": {"type": "algedonic_signal", "data": {"intensity": 0.8}},
    "algedonic-string": {"type": "algedonic_signal", "data": {"intensity": "high"}},
    "algedonic-none": {"type": "algedonic_signal", "data": {}},
    "vsm-s3": {"type": "vsm_pattern_flow", "data": {"subsystem": "s3", "confidence": 0.5}},
    "vsm-S5": {"type": "vsm_pattern_flow", "data": {"subsystem": "S5", "metadata": {}}},
    "vsm-s6": {"type": "vsm_pattern_flow", "data": {"subsystem": "s6"}},
    "vsm-no-subsystem": {"type": "vsm_pattern_flow", "data": {}},
    "confidence-string": {"type": "pattern_detected", "data": {"confidence": "high"}},
    "metadata-array": {"type": "pattern_detected", "data": {"metadata": [1]}},
    "batch-good": [{"type": "pattern_detected", "data": {}},
                   {"type": "vsm_pattern_flow", "data": {"subsystem": "s1"}}],
    "batch-one-bad": [{"type": "pattern_detected", "data": {}},
                      {"type": "pattern_detected", "data": {"confidence": "x"}},
                      {"type": "nope"}],
    "batch-empty": [],
    "type-missing": {"data": {}},
    "type-number": {"type": 5, "data": {}},
    "type-unknown": {"type": "pattern_exploded", "data": {}},
    "data-string": {"type": "pattern_detected", "data": "x"},
    "not-an-object": [1, 2, 3],
    "string": "pattern_detected",
}
for name, value in events.items():
    write("events", name, json.dumps(value, separators=(",", ":")))
write("events", "huge-numbers", '{"type":"pattern_detected","data":{"confidence":1e400,"metadata":{}}}')
write("events", "nested-metadata",
      '{"type":"pattern_detected","data":{"metadata":' + '{"a":' * 100 + "1" + "}" * 100 + "}}")
write("events", "duplicate-keys",
      '{"type":"pattern_detected","type":"nope","data":{"confidence":"x","confidence":1}}')

# --- token: tokens, upgrade queries and protocol headers, PEM keys ----------

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(header, claims, key=SECRET, digest=hashlib.sha256, sig=None):
    h = b64(json.dumps(header, separators=(",", ":")).encode())
    c = b64(json.dumps(claims, separators=(",", ":")).encode())
    msg = f"{h}.{c}"
    if sig is None:
        sig = b64(hmac.new(key, msg.encode(), digest).digest())
    return f"{msg}.{sig}"


good = {"sub": "alice", "iat": NOW, "exp": 4102444800}
hs = {"alg": "HS256", "typ": "JWT"}
rsa_pub = open(os.path.join(KEYS, "test-only-rsa-public.pem"), "rb").read()
ed_pub = open(os.path.join(KEYS, "test-only-ed25519-public.pem"), "rb").read()
tokens = {
    "hs256-good": token(hs, good),
    "hs256-good-topics-info": token(hs, dict(good, topics=["rooms:*"], info={"n": "A"})),
    "hs256-no-exp": token(hs, {"sub": "alice"}),
    "hs256-expired": token(hs, dict(good, exp=NOW - 3600)),
    "hs256-nbf-future": token(hs, dict(good, nbf=NOW + 3600)),
    "hs256-exp-fraction": token(hs, dict(good, exp=4102444800.5)),
    "hs256-exp-string": token(hs, dict(good, exp="4102444800")),
    "hs256-no-sub": token(hs, {"exp": 4102444800}),
    "hs256-empty-sub": token(hs, dict(good, sub="")),
    "hs256-info-1025": token(hs, dict(good, info={"n": "x" * 1017})),
    "hs256-info-string": token(hs, dict(good, info="x")),
    "hs256-topics-string": token(hs, dict(good, topics="rooms:*")),
    "hs256-claims-array": token(hs, ["alice"]),
    "hs256-over-cap": token(hs, dict(good, pad="p" * 9000)),
    "hs256-padded-base64": token(hs, good).replace(".", "==.", 1),
    "hs512-right-secret": token({"alg": "HS512"}, good, digest=hashlib.sha512),
    "hs256-wrong-secret": token(hs, good, key=b"another secret"),
    "alg-none": token({"alg": "none", "typ": "JWT"}, good, sig=""),
    "alg-None": token({"alg": "None"}, good, sig=""),
    "alg-none-with-good-sig": token({"alg": "none"}, good,
                                    sig=token(hs, good).rsplit(".", 1)[1]),
    "alg-missing": token({"typ": "JWT"}, good),
    "hs-rs-confusion": token(hs, good, key=rsa_pub),
    "hs-ed-confusion": token(hs, good, key=ed_pub),
    "rs256-header-hmac-sig": token({"alg": "RS256"}, good),
    "two-parts": "eyJhbGciOiJIUzI1NiJ9.e30",
    "four-parts": token(hs, good) + ".x",
    "dots": "..",
    "abc": "a.b.c",
    "non-ascii": "é.é.é",
    "undefined": "undefined",
    "query-token": "vsn=2.0.0&token=" + token(hs, good),
    "query-empty-then-token": "token=&token=abc",
    "query-percent": "token=%65%79%4A&vsn=1",
    "protocol-bearer": "phoenix, base64url.bearer.phx." + base64.b64encode(token(hs, good).encode()).decode().rstrip("="),
    "protocol-bearer-bad-base64": "phoenix, base64url.bearer.phx.!!not base64!!",
    "protocol-bearer-empty": "base64url.bearer.phx.",
}
for name, t in tokens.items():
    write("token", name, t)
for name in ["rsa-public", "ec-p256-public", "ed25519-public", "ec-p384-public", "ec-p256-private"]:
    write("token", f"pem-{name}", open(os.path.join(KEYS, f"test-only-{name}.pem"), "rb").read())
write("token", "pem-broken", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
write("token", "pem-certificate-label", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
