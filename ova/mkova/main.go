// Command mkova packs a streamOptimized VMDK into the appliance OVA with its
// OVF descriptor and SHA-256 manifest. The image build script calls it.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/continuum-cdp/continuum/ova"
)

func main() {
	disk := flag.String("disk", "", "streamOptimized VMDK of the appliance")
	out := flag.String("out", "", "OVA file to write")
	version := flag.String("version", "dev", "appliance version")
	capacity := flag.Int64("capacity-mib", ova.DefaultHardware.DiskCapacity>>20, "virtual disk capacity in MiB")
	epoch := flag.Int64("mtime", 0, "modification time of archive members (Unix seconds; SOURCE_DATE_EPOCH)")
	flag.Parse()
	if *disk == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: mkova -disk DISK.vmdk -out FILE.ova [-version V]")
		os.Exit(2)
	}
	hw := ova.DefaultHardware
	hw.DiskCapacity = *capacity << 20
	if err := ova.BuildOVA(*out, *disk, *version, hw, time.Unix(*epoch, 0).UTC()); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
