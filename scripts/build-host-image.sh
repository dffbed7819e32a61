#!/usr/bin/env bash
# Builds the test "host" for FleetAgentScore's Host target, without any registry:
#   localhost/harmony-fleet-host:bookworm   a debootstrapped Debian rootfs booting systemd, with
#                                           openssh-server, podman and runc, like a Pi on a LAN
# Its name is printed on stdout (the tag carries the revision below).
# The rootfs tarball is cached under $HARMONY_FLEET_CACHE/host-image (default
# ~/.cache/harmony-fleet); a warm run only re-imports it if the image is missing and returns
# in seconds. Nothing about the fleet is baked in: the Score installs the agent over SSH.
# Usage: scripts/build-host-image.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${HARMONY_FLEET_CACHE:-$HOME/.cache/harmony-fleet}
export CONTAINERS_CONF="$cache/containers.conf"
# Bump when the package list or the rootfs tweaks below change: the cached tarball is rebuilt.
revision=3
image=localhost/harmony-fleet-host:bookworm-r$revision
dir="$cache/host-image"
tarball="$dir/host-bookworm-r$revision.tar"
say() { printf '[build-host-image] %s\n' "$*" >&2; }
started=$SECONDS

mkdir -p "$dir"
[[ -f "$CONTAINERS_CONF" ]] || install -m 0644 "$repo/config/containers.conf" "$CONTAINERS_CONF"

if [[ ! -f "$tarball" ]]; then
  command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  work=$(mktemp -d "$dir/build.XXXXXX")
  rootfs="$work/rootfs"
  trap 'umount "$rootfs/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
  say "debootstrapping a Debian bookworm rootfs with systemd, openssh-server and podman (a few minutes)"
  debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
  mount -t proc proc "$rootfs/proc"
  # Installed with apt inside the rootfs (debootstrap --include fails configuring
  # golang-github-containers-common, see build-images.sh).
  chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    systemd systemd-sysv dbus openssh-server podman runc ca-certificates iproute2 >/dev/null
  chroot "$rootfs" apt-get clean
  umount "$rootfs/proc"
  # Host keys are made at first boot (one per container, like a freshly flashed device), not
  # baked into the image.
  rm -f "$rootfs"/etc/ssh/ssh_host_*
  mkdir -p "$rootfs/etc/systemd/system/ssh.service.d"
  cat >"$rootfs/etc/systemd/system/ssh.service.d/host-keys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF
  # Shut down within seconds even when a workload ignores SIGTERM (a busybox PID 1 does), as
  # an appliance image would; systemd's default is 90 s per unit.
  mkdir -p "$rootfs/etc/systemd/system.conf.d"
  printf '[Manager]\nDefaultTimeoutStopSec=10s\n' >"$rootfs/etc/systemd/system.conf.d/harmony-fleet.conf"
  # A machine id of its own at first boot, as on a freshly flashed device.
  : >"$rootfs/etc/machine-id"
  rm -f "$rootfs/var/lib/dbus/machine-id"
  # Key authentication only.
  cat >"$rootfs/etc/ssh/sshd_config.d/harmony-fleet.conf" <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
EOF
  # Units that fail or make no sense in a container on this kernel.
  for unit in systemd-resolved.service systemd-timesyncd.service getty@tty1.service \
    console-getty.service systemd-networkd-wait-online.service apt-daily.timer \
    apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer podman-auto-update.timer \
    podman-auto-update.service; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
  done
  # podman inside the host: the same settings as everywhere else here (runc, no default ulimits).
  install -m 0644 "$repo/config/containers.conf" "$rootfs/etc/containers/containers.conf"
  echo "harmony-fleet-host" >"$rootfs/etc/hostname"
  tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$work"
  trap - EXIT
  say "rootfs cached at $tarball"
fi

# Older revisions are dead weight.
for old in "$dir"/host-bookworm-r*.tar; do
  if [[ -e $old && $old != "$tarball" ]]; then rm -f "$old"; fi
done
if ! podman image exists "$image"; then
  podman import -q --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL=SIGRTMIN+3' \
    "$tarball" "$image" >/dev/null
  say "imported $image"
fi
say "done in $((SECONDS - started))s"
echo "$image"
