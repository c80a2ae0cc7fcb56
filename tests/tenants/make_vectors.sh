#!/bin/sh
# Writes signing_vectors.json from the README's description of HUSELET-HMAC-SHA256,
# using only printf, sha256sum, openssl and jq: the vectors must not come from the
# Python code they test. Run: sh tests/tenants/make_vectors.sh > tests/tenants/signing_vectors.json
set -eu
nl='
'
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
hmac() { printf '%s' "$2" | openssl dgst -sha256 -hmac "$1" | sed 's/^.*= //'; }

# vector NAME METHOD TARGET BODY KEY_ID SECRET DATE NONCE CTYPE CANONICAL_QUERY PATH
vector() {
  name=$1 method=$2 target=$3 body=$4 key=$5 secret=$6 date=$7 nonce=$8 ctype=$9
  shift 9
  cquery=$1 path=$2 host="127.0.0.1:8470"
  bsha=$(sha "$body")
  if [ -n "$ctype" ]; then
    headers="content-type:$ctype${nl}host:$host${nl}x-huselet-content-sha256:$bsha${nl}x-huselet-date:$date${nl}x-huselet-nonce:$nonce"
    names="content-type;host;x-huselet-content-sha256;x-huselet-date;x-huselet-nonce"
  else
    headers="host:$host${nl}x-huselet-content-sha256:$bsha${nl}x-huselet-date:$date${nl}x-huselet-nonce:$nonce"
    names="host;x-huselet-content-sha256;x-huselet-date;x-huselet-nonce"
  fi
  canonical="$method${nl}$path${nl}$cquery${nl}$headers${nl}${nl}$names${nl}$bsha"
  sts="HUSELET-HMAC-SHA256${nl}$date${nl}$(sha "$canonical")"
  sig=$(hmac "$secret" "$sts")
  jq -n --arg name "$name" --arg method "$method" --arg target "$target" --arg body "$body" \
    --arg key_id "$key" --arg secret "$secret" --arg date "$date" --arg nonce "$nonce" \
    --arg ctype "$ctype" --arg host "$host" --arg canonical "$canonical" --arg sts "$sts" \
    --arg sig "$sig" --arg names "$names" --arg bsha "$bsha" \
    '{name: $name, method: $method, target: $target, body: $body, key_id: $key_id,
      secret: $secret, date: $date, nonce: $nonce, content_type: $ctype, host: $host,
      body_sha256: $bsha, canonical_request: $canonical, string_to_sign: $sts,
      signature: $sig,
      authorization: ("HUSELET-HMAC-SHA256 Credential=" + $key_id + ", SignedHeaders=" + $names + ", Signature=" + $sig)}'
}

{
  vector readme POST /v1/invoke/hello '{"name":"ops"}' HKEXAMPLEKEY0000 \
    'wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY' 20261130T045119Z 0123456789abcdef \
    application/json '' /v1/invoke/hello
  vector query POST '/v1/invoke/hello?b=2&a=1&flag&a=0' 'plain text body' HKQUERYKEY000000 \
    'another secret with spaces' 20240229T235959Z ffffffffffffffff \
    'text/plain; charset=utf-8' 'a=0&a=1&b=2&flag=' /v1/invoke/hello
  vector empty POST /v1/invoke/noop '' HKEMPTYBODY00000 's3cr3t' 20260101T000000Z 00 \
    '' '' /v1/invoke/noop
} | jq -s '{algorithm: "HUSELET-HMAC-SHA256", generated_by: "tests/tenants/make_vectors.sh (printf, sha256sum, openssl, jq)", vectors: .}'
