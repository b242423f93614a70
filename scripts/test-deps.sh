#!/usr/bin/env bash
# Installs the Debian packages the tests need, when missing. Runs apt-get
# update once, only if something has to be installed.
set -euo pipefail
pkgs=(
	# real NBD clients that write to protected disks
	qemu-utils libnbd-bin fio
	# the OVA build and boot test
	qemu-system-x86 syslinux syslinux-common extlinux mtools dosfstools
	busybox-static genisoimage cpio fdisk kmod e2fsprogs
	# a real Prometheus server scraping the lab
	prometheus
)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
