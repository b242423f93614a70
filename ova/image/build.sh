#!/usr/bin/env bash
# Builds the appliance OVA from Debian packages and the continuum binary,
# without Docker, without root-only steps and without mounting anything:
#   ova/image/build.sh OUT_DIR VERSION
# writes OUT_DIR/continuum-VERSION.ova. Intermediate files and the
# downloaded kernel package stay in ova/build/ (ignored by git).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$(mkdir -p "${1:-$repo/out}" && cd "${1:-$repo/out}" && pwd)"
version="${2:-dev}"
work="${OVA_WORK:-$repo/ova/build}"
GO="${GO:-go}"
boot_mib=64
disk_mib=4096

# Tools, from Debian packages.
tools=(busybox-static syslinux syslinux-common mtools dosfstools fdisk kmod cpio qemu-utils e2fsprogs gzip)
missing=()
for p in "${tools[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	echo "installing: ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$work/cache"
rm -rf "$work/root" "$work/img"
mkdir -p "$work/root" "$work/img"

# Kernel: the versioned package linux-image-amd64 points at, unpacked, not
# installed.
kpkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
[ -n "$kpkg" ] || { echo "cannot find the kernel package of linux-image-amd64" >&2; exit 1; }
kver="${kpkg#linux-image-}"
deb="$(ls "$work/cache/${kpkg}_"*.deb 2>/dev/null | head -n1 || true)"
if [ -z "$deb" ]; then
	(cd "$work/cache" && apt-get download "$kpkg" >/dev/null)
	deb="$(ls "$work/cache/${kpkg}_"*.deb | head -n1)"
fi
kdir="$work/cache/kernel-$kver"
if [ ! -f "$kdir/boot/vmlinuz-$kver" ]; then
	rm -rf "$kdir"
	dpkg-deb -x "$deb" "$kdir"
	depmod -b "$kdir" "$kver"
fi

# Root file system (an initramfs: nothing to mount at boot).
r="$work/root"
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,data,root,lib/modules/$kver}
cp /bin/busybox "$r/bin/busybox"
ln -s busybox "$r/bin/sh"
ln -s ../bin/busybox "$r/sbin/init"
install -m 0755 "$here/init" "$r/init"
install -m 0644 "$here/inittab" "$r/etc/inittab"
install -m 0755 "$here/udhcpc.script" "$r/etc/udhcpc.script"
echo "root:x:0:0:root:/root:/bin/sh" >"$r/etc/passwd"
echo "root:x:0:" >"$r/etc/group"
echo "continuum" >"$r/etc/hostname"
: >"$r/etc/resolv.conf"
echo "$version" >"$r/etc/continuum-version"

# Drivers: NICs (vmxnet3 on vSphere, e1000 and virtio elsewhere), disks
# (LSI Logic, PVSCSI, AHCI, PIIX), CD-ROM and its ISO 9660 file system for
# the OVF environment, ext4 for the data partition.
mods=(vmxnet3 e1000 e1000e virtio_net virtio_pci virtio_blk virtio_scsi
	mptspi vmw_pvscsi ata_piix ahci sd_mod sr_mod isofs ext4)
: >"$r/etc/modules.load"
for m in "${mods[@]}"; do
	modprobe -d "$kdir" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
	rel="${ko#"$kdir"/lib/modules/$kver/}"
	mkdir -p "$r/lib/modules/$kver/$(dirname "$rel")"
	cp "$ko" "$r/lib/modules/$kver/$rel"
	echo "$rel" >>"$r/etc/modules.load"
done

# The one binary, static.
CGO_ENABLED=0 GOOS=linux GOARCH=amd64 "$GO" build -trimpath \
	-ldflags "-s -w -X github.com/continuum-cdp/continuum/appliance.Version=$version" \
	-o "$r/bin/continuum" "$repo/cmd/continuum"

find "$r" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
(cd "$r" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --reproducible -R 0:0 --quiet) | gzip -6n >"$work/img/initrd.gz"

# Boot partition: FAT16 with syslinux, written without mounting.
img="$work/img"
cp "$kdir/boot/vmlinuz-$kver" "$img/vmlinuz"
rm -f "$img/boot.fat"
mkfs.vfat -C -F 16 -n CONTINUUM -i 434f4e54 -h 2048 "$img/boot.fat" $((boot_mib * 1024)) >/dev/null
syslinux --install "$img/boot.fat"
mcopy -i "$img/boot.fat" "$img/vmlinuz" "$img/initrd.gz" "$here/syslinux.cfg" ::/

# Data partition: ext4, empty, labelled so the appliance finds it.
data_mib=$((disk_mib - boot_mib - 1))
rm -f "$img/data.ext4"
truncate -s "${data_mib}M" "$img/data.ext4"
mkfs.ext4 -q -F -L continuum-data -U 434f4e54-4355-4d00-0000-000000000001 -E root_owner=0:0 "$img/data.ext4" "${data_mib}M"

# Disk: MBR with syslinux's boot code, the two partitions at their offsets.
raw="$img/disk.raw"
rm -f "$raw"
truncate -s "${disk_mib}M" "$raw"
sfdisk -q "$raw" <<PART
label: dos
label-id: 0x434f4e54
unit: sectors
start=2048, size=$((boot_mib * 2048)), type=e, bootable
start=$(((boot_mib + 1) * 2048)), type=83
PART
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$img/boot.fat" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$img/data.ext4" of="$raw" bs=1M seek=$((boot_mib + 1)) conv=notrunc,sparse status=none
rm -f "$img/data.ext4"
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized,adapter_type=lsilogic "$raw" "$img/disk.vmdk"
rm -f "$raw"

ova="$out/continuum-$version.ova"
"$GO" run "$repo/ova/mkova" -disk "$img/disk.vmdk" -out "$ova" -version "$version" \
	-capacity-mib "$disk_mib" -mtime "${SOURCE_DATE_EPOCH:-0}"
echo "$ova ($(stat -c %s "$ova") bytes, built in ${SECONDS}s)"
