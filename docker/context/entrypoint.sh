#!/bin/sh
# nix-builder entrypoint: host key and client key from the volume, the systems that really run,
# Nix settings from the environment, then sshd in the foreground (tini is PID 1).
set -eu
V=/var/lib/nix-builder

[ -s "$V/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C nix-builder -f "$V/id_ed25519"
# A bind mount from a Mac (VirtioFS, osxfs) may not keep modes: sshd gets its own copy, 0600.
chmod 600 "$V/id_ed25519" 2>/dev/null || true
install -m 600 "$V/id_ed25519" /etc/ssh/nix-builder_host_ed25519
[ -s "$V/id_ed25519.pub" ] || ssh-keygen -y -f /etc/ssh/nix-builder_host_ed25519 > "$V/id_ed25519.pub.tmp"
[ -f "$V/id_ed25519.pub.tmp" ] && mv "$V/id_ed25519.pub.tmp" "$V/id_ed25519.pub"

if [ ! -s "$V/host.pub" ]; then
  echo "nix-builder: $V/host.pub is missing: put the client's public key there" >&2
  exit 64
fi
install -d -m 700 /root/.ssh
install -m 600 "$V/host.pub" /root/.ssh/authorized_keys

# Which systems run here, and how. The native one always; a foreign one only when its probe
# program really runs (exits 42). binfmt_misc is not mounted in a container; where it can be
# mounted, its handler names say what runs the foreign system (rosetta, qemu-*).
native=$(uname -m)
case "$native" in
  arm64) native=aarch64 ;;
esac
case "$native" in
  x86_64) foreign=aarch64 ;;
  aarch64) foreign=x86_64 ;;
  *) foreign= ;;
esac
how_foreign() {
  d=/proc/sys/fs/binfmt_misc
  [ -e "$d/status" ] || mount -t binfmt_misc binfmt_misc "$d" 2>/dev/null || true
  for f in "$d"/*; do
    [ -f "$f" ] && grep -qs '^enabled' "$f" || continue
    case "$(basename "$f")" in
      rosetta*) echo rosetta; return ;;
    esac
  done
  for f in "$d"/*; do
    [ -f "$f" ] && grep -qs '^enabled' "$f" || continue
    case "$(basename "$f")" in
      qemu-"$1"*) echo qemu; return ;;
    esac
  done
  echo emulated
}
mkdir -p /run/nix-builder
systems="$native-linux native"
extra=
if [ -n "$foreign" ] && [ -x "/usr/local/lib/nix-builder/probe-$foreign" ]; then
  rc=0
  "/usr/local/lib/nix-builder/probe-$foreign" 2>/dev/null || rc=$?
  if [ "$rc" -eq 42 ]; then
    extra="$foreign-linux"
    systems="$systems
$foreign-linux $(how_foreign "$foreign")"
  fi
fi
printf '%s\n' "$systems" > /run/nix-builder/systems

sandbox=${NIX_BUILDER_SANDBOX:-true}
{
  echo "build-users-group = nixbld"
  echo "trusted-users = root"
  echo "experimental-features = nix-command flakes"
  echo "system = $native-linux"
  [ -n "$extra" ] && echo "extra-platforms = $extra"
  echo "sandbox = $sandbox"
  # A sandbox that cannot start must fail the build, never be skipped silently.
  echo "sandbox-fallback = false"
  # Nix itself emulated (an amd64 image on Apple Silicon): the emulator cannot load Nix's
  # seccomp filter, so builds would fail to start with it.
  [ "${NIX_BUILDER_EMULATED:-}" = 1 ] && echo "filter-syscalls = false"
  # Builds expect /bin/sh; inside the sandbox it is this static shell (some Nix builds of
  # Debian have it compiled in, others not).
  [ -x /usr/bin/bash-static ] && echo "sandbox-paths = /bin/sh=/usr/bin/bash-static"
  # A cache that does not answer must not hold up builds and copies: a connection gets a
  # short time to open, and `substituters` itself comes from the file the watcher below keeps
  # (only the caches that answered its last look).
  echo "connect-timeout = ${NIX_BUILDER_CONNECT_TIMEOUT:-5}"
  echo "!include /run/nix-builder/substituters.conf"
  [ -n "${NIX_BUILDER_TRUSTED_PUBLIC_KEYS:-}" ] && echo "trusted-public-keys = $NIX_BUILDER_TRUSTED_PUBLIC_KEYS"
  echo "min-free = ${NIX_BUILDER_MIN_FREE:-1073741824}"
  echo "max-free = ${NIX_BUILDER_MAX_FREE:-4294967296}"
  # Sized by builderd from what the engine gives the container (or the config).
  echo "max-jobs = ${NIX_BUILDER_MAX_JOBS:-auto}"
  echo "cores = ${NIX_BUILDER_CORES:-0}"
} > /etc/nix/nix.conf

# Substituters that cannot be reached. Nix retries a cache that does not answer about five times
# with backoff (4-5 s) in every nix-daemon session, that is in every build and every copy, and
# a connection to a host that drops packets waits for curl's own timeout. A watcher looks at each
# configured cache every NIX_BUILDER_SUBSTITUTER_CHECK seconds (DNS and a TCP connect, or the
# directory of a file:// cache) and keeps in substituters.conf only those that answered; a cache
# that answers again is back at the next look. /run/nix-builder/substituters says which is which
# (the health check reads it). Other schemes (s3://, ssh://) cannot be looked at cheaply and stay.
wanted=${NIX_BUILDER_SUBSTITUTERS-https://cache.nixos.org/}
answers() {
  case "$1" in
    http://* | https://*)
      hp=${1#*://}
      hp=${hp%%/*}
      hp=${hp##*@}
      case "$hp" in
        \[*\]:*) host=${hp%%]:*}; host=${host#[}; port=${hp##*]:} ;;
        \[*\]) host=${hp#[}; host=${host%]}; port= ;;
        *:*) host=${hp%%:*}; port=${hp##*:} ;;
        *) host=$hp; port= ;;
      esac
      [ -n "$port" ] || case "$1" in https:*) port=443 ;; *) port=80 ;; esac
      timeout "${NIX_BUILDER_CONNECT_TIMEOUT:-5}" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
      ;;
    file://*)
      p=${1#file://}
      [ -d "${p%%\?*}" ]
      ;;
    *) true ;;
  esac
}
look_at_substituters() {
  use=
  seen=
  for s in $wanted; do
    if answers "$s"; then
      use="$use${use:+ }$s"
      seen="${seen}reachable $s
"
    else
      seen="${seen}unreachable $s
"
    fi
  done
  printf 'substituters = %s\n' "$use" > /run/nix-builder/substituters.conf.tmp
  mv /run/nix-builder/substituters.conf.tmp /run/nix-builder/substituters.conf
  printf '%s' "$seen" > /run/nix-builder/substituters.tmp
  mv /run/nix-builder/substituters.tmp /run/nix-builder/substituters
}
# Until the first look, every configured cache is used, as Nix would.
printf 'substituters = %s\n' "$wanted" > /run/nix-builder/substituters.conf
if [ -n "$wanted" ]; then
  # Twice forked, so that tini (not sshd) is its parent.
  ( ( while :; do
      look_at_substituters
      sleep "${NIX_BUILDER_SUBSTITUTER_CHECK:-30}"
    done ) </dev/null >/dev/null 2>&1 & )
else
  : > /run/nix-builder/substituters
fi

# Debian's minimal rootfs may lack /etc/hosts; ssh-ng sessions and builds expect localhost.
[ -s /etc/hosts ] || cat /etc/hosts.builder > /etc/hosts 2>/dev/null || true

mkdir -p /run/sshd /nix/var/nix
exec /usr/sbin/sshd -D -e "$@"
