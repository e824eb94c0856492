#!/bin/sh
# nix-builder entrypoint: host key and client key from the volume, Nix settings from the
# environment, then sshd in the foreground (tini is PID 1).
set -eu
V=/var/lib/nix-builder

[ -s "$V/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C nix-builder -f "$V/id_ed25519"
chmod 600 "$V/id_ed25519"
[ -s "$V/id_ed25519.pub" ] || ssh-keygen -y -f "$V/id_ed25519" > "$V/id_ed25519.pub.tmp"
[ -f "$V/id_ed25519.pub.tmp" ] && mv "$V/id_ed25519.pub.tmp" "$V/id_ed25519.pub"

if [ ! -s "$V/host.pub" ]; then
  echo "nix-builder: $V/host.pub is missing: put the client's public key there" >&2
  exit 64
fi
install -d -m 700 /root/.ssh
install -m 600 "$V/host.pub" /root/.ssh/authorized_keys

native=$(uname -m)
case "$native" in
  x86_64) system=x86_64-linux; foreign=aarch64-linux ;;
  aarch64|arm64) system=aarch64-linux; foreign=x86_64-linux ;;
  *) system="$native-linux"; foreign= ;;
esac
extra=
# An emulator registered with binfmt_misc (Rosetta on Apple Silicon, or qemu) runs the foreign system.
if [ -n "$foreign" ] && [ -d /proc/sys/fs/binfmt_misc ]; then
  for f in /proc/sys/fs/binfmt_misc/*; do
    case "$(basename "$f")" in
      rosetta|qemu-x86_64|qemu-aarch64) grep -qs '^enabled' "$f" && extra=$foreign ;;
    esac
  done
fi

sandbox=${NIX_BUILDER_SANDBOX:-true}
{
  echo "build-users-group = nixbld"
  echo "trusted-users = root"
  echo "experimental-features = nix-command flakes"
  echo "system = $system"
  [ -n "$extra" ] && echo "extra-platforms = $extra"
  echo "sandbox = $sandbox"
  [ "$sandbox" = false ] || echo "sandbox-fallback = false"
  [ -n "$extra" ] && [ "$extra" = x86_64-linux ] && echo "filter-syscalls = false"
  echo "substituters = ${NIX_BUILDER_SUBSTITUTERS-https://cache.nixos.org/}"
  [ -n "${NIX_BUILDER_TRUSTED_PUBLIC_KEYS:-}" ] && echo "trusted-public-keys = $NIX_BUILDER_TRUSTED_PUBLIC_KEYS"
  echo "min-free = ${NIX_BUILDER_MIN_FREE:-1073741824}"
  echo "max-free = ${NIX_BUILDER_MAX_FREE:-4294967296}"
  echo "max-jobs = auto"
} > /etc/nix/nix.conf

# Debian's minimal rootfs may lack /etc/hosts; ssh-ng sessions and builds expect localhost.
[ -s /etc/hosts ] || cat /etc/hosts.builder > /etc/hosts 2>/dev/null || true

mkdir -p /run/sshd /nix/var/nix
exec /usr/sbin/sshd -D -e "$@"
