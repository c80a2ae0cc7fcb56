#!/bin/sh
# Make a small PKI for a huselet fleet: one CA, and certificates signed by it.
#   sh scripts/fleet-pki.sh DIR ca                 -> DIR/ca.pem, DIR/ca.key (keep ca.key offline)
#   sh scripts/fleet-pki.sh DIR cert NAME [SAN...] -> DIR/NAME.pem, DIR/NAME.key
# SANs are the names a peer checks: "IP:10.0.0.1", "DNS:sched-a.example" (a
# scheduler's cert must carry the address nodes dial, or their tls_server_name).
# Nodes and schedulers each get their own certificate; the scheduler requires
# a node certificate of this CA, and each node checks the scheduler's.
set -eu
dir=$1; what=$2; shift 2
mkdir -p "$dir"
umask 077
case "$what" in
    ca)
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 -subj "/CN=huselet fleet CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
            2>/dev/null
        ;;
    cert)
        name=$1; shift
        san="DNS:$name"
        for extra in "$@"; do san="$san,$extra"; done
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$name" 2>/dev/null
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > "$dir/$name.ext"
        openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
            -CAcreateserial -out "$dir/$name.pem" -days 825 -extfile "$dir/$name.ext" 2>/dev/null
        rm -f "$dir/$name.csr" "$dir/$name.ext"
        ;;
    *) echo "usage: $0 DIR ca | $0 DIR cert NAME [SAN...]" >&2; exit 2 ;;
esac
