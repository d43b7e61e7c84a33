#!/bin/sh
# Lay out the root file system of berth's container image: the binary, the shared
# libraries it links (with the dynamic loader, at the paths the binary names them by),
# passwd/group with the unprivileged `berth` user (uid/gid 10001), nsswitch.conf, the
# CA bundle, the container default configuration (`berth default-config --container`),
# the data directory and /tmp. Nothing else: no shell, no package manager. The final
# `FROM scratch` stage of deploy/container/Containerfile copies the result to `/`.
#
#   deploy/container/rootfs.sh BERTH_BINARY OUT_DIR
#
# Runs in the Containerfile's build stage, and on a CI host with the host-built release
# binary (the two images then differ only in the binary's build). Needs root (the data
# directory is owned by 10001:10001) and ldd; uses strip when present. OUT_DIR is
# wiped first, so a rerun starts clean.
set -eu

usage() {
  echo "usage: $0 BERTH_BINARY OUT_DIR" >&2
  exit 2
}
[ "$#" -eq 2 ] || usage
bin=$1
out=$2
[ -x "$bin" ] || { echo "$0: $bin is not an executable file" >&2; exit 1; }
[ -n "$out" ] && [ "$out" != "/" ] || { echo "$0: refusing to use '$out' as the output directory" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "$0: run as root: /var/lib/berth must be owned by 10001:10001" >&2; exit 1; }
command -v ldd >/dev/null 2>&1 || { echo "$0: ldd not found (libc-bin)" >&2; exit 1; }

uid=10001
gid=10001

rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)

# The binary, stripped when strip is around (the debug info is most of its size).
install -d -m 0755 "$out/usr/bin"
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug -o "$out/usr/bin/berth" "$bin"
else
  cp "$bin" "$out/usr/bin/berth"
fi
chmod 0755 "$out/usr/bin/berth"

# Its shared libraries, each at the path ldd names it by (the loader at /lib64/...),
# as a regular file: symlinks are followed so the image needs no link farm. A static
# binary has none.
if deps=$(ldd "$bin" 2>&1); then
  case $deps in
    *"not found"*) printf '%s: %s links a library this host lacks:\n%s\n' "$0" "$bin" "$deps" >&2; exit 1 ;;
  esac
  printf '%s\n' "$deps" | awk '
    $2 == "=>" && $3 ~ /^\// { print $3; next }   # libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
    $1 ~ /^\// { print $1 }                       # /lib64/ld-linux-x86-64.so.2 (0x...)
  ' | sort -u > "$out/.libs"
  while read -r lib; do
    install -d -m 0755 "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
  done < "$out/.libs"
  rm -f "$out/.libs"
else
  case $deps in
    *"not a dynamic executable"*|*"statically linked"*) ;;
    *) printf '%s: ldd %s failed:\n%s\n' "$0" "$bin" "$deps" >&2; exit 1 ;;
  esac
fi

# Users and groups: root, nobody, and berth (the image's USER).
install -d -m 0755 "$out/etc"
cat > "$out/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/sbin/nologin
berth:x:$uid:$gid:berth:/var/lib/berth:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
cat > "$out/etc/group" <<GROUP
root:x:0:
berth:x:$gid:
nogroup:x:65534:
GROUP
chmod 0644 "$out/etc/passwd" "$out/etc/group"
# glibc's resolver: files first (the runtime's /etc/hosts), then DNS (its resolv.conf).
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$out/etc/nsswitch.conf"
chmod 0644 "$out/etc/nsswitch.conf"

# CA certificates, for upstreams and S3 endpoints whose TLS is checked against the
# system store (berth also carries the Mozilla roots built in).
ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then
  install -d -m 0755 "$out/etc/ssl/certs"
  cp -L "$ca" "$out$ca"
  chmod 0644 "$out$ca"
else
  echo "$0: warning: $ca not found (ca-certificates); the image has berth's built-in roots only" >&2
fi

# The container default configuration: listens on all interfaces, stores in
# /var/lib/berth. A file mounted over it (or a ConfigMap) replaces it.
install -d -m 0755 "$out/etc/berth"
"$bin" default-config --container > "$out/etc/berth/berth.toml"
chmod 0644 "$out/etc/berth/berth.toml"
"$bin" check-config --config "$out/etc/berth/berth.toml" >/dev/null

# The data directory (a volume in the image) and a world-writable /tmp.
install -d -m 0750 -o "$uid" -g "$gid" "$out/var/lib/berth"
install -d -m 1777 "$out/tmp"

echo "$0: root file system for $("$bin" --version) in $out ($(du -sh "$out" | cut -f1))"
