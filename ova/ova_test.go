package ova

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/ovf"
	"github.com/vmware/govmomi/ovf/importer"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// buildTestOVA packs a stand-in disk (random bytes: neither the parser nor
// the simulator reads VMDK contents) into an OVA and returns its path.
func buildTestOVA(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.vmdk")
	data := make([]byte, 100_000)
	rand.Read(data)
	if err := os.WriteFile(disk, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "continuum-test.ova")
	if err := BuildOVA(out, disk, "1.2.3", DefaultHardware, time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	return out
}

func readOVA(t *testing.T, path string) (names []string, files map[string][]byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files = map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names, files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		files[h.Name] = b
	}
}

func TestOVALayoutAndManifest(t *testing.T) {
	path := buildTestOVA(t)
	names, files := readOVA(t, path)
	if strings.Join(names, ",") != "continuum.ovf,continuum.mf,continuum-disk1.vmdk" {
		t.Fatalf("members = %v: the descriptor must come first", names)
	}
	sums, err := ParseManifest(bytes.NewReader(files["continuum.mf"]))
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 2 {
		t.Fatalf("manifest lists %d files, want 2: %v", len(sums), sums)
	}
	for name, want := range sums {
		got := sha256.Sum256(files[name])
		if hex.EncodeToString(got[:]) != want {
			t.Errorf("manifest digest of %s does not match its content", name)
		}
	}
	// Equal inputs give an equal archive.
	again := buildTestOVA(t)
	_, files2 := readOVA(t, again)
	if !bytes.Equal(files["continuum.ovf"], files2["continuum.ovf"]) {
		t.Error("descriptor differs between two builds of the same disk size")
	}
}

func TestParseManifestRejects(t *testing.T) {
	for _, in := range []string{
		"SHA1(a.ovf)= 0123",
		"SHA256(a.ovf)= zz",
		"SHA256 a.ovf 00",
		"SHA256(a.ovf)= " + strings.Repeat("0", 63),
	} {
		if _, err := ParseManifest(strings.NewReader(in)); err == nil {
			t.Errorf("ParseManifest(%q) accepted", in)
		}
	}
}

func TestDescriptorParsesWithGovmomi(t *testing.T) {
	_, files := readOVA(t, buildTestOVA(t))
	env, err := ovf.Unmarshal(bytes.NewReader(files["continuum.ovf"]))
	if err != nil {
		t.Fatalf("govmomi cannot parse the descriptor: %v", err)
	}
	if env.References[0].Size != 100_000 || env.References[0].Href != "continuum-disk1.vmdk" {
		t.Errorf("references = %+v", env.References[0])
	}
	vs := env.VirtualSystem
	if vs == nil || len(vs.Product) != 1 {
		t.Fatalf("virtual system = %+v", vs)
	}
	ps := vs.Product[0]
	if ps.Class == nil || *ps.Class != PropertyClass || ps.Version != "1.2.3" {
		t.Errorf("product section class/version = %v/%q", ps.Class, ps.Version)
	}
	if len(vs.Eula) != 0 {
		t.Error("descriptor has an EULA section")
	}
	if len(ps.Property) != len(Properties) {
		t.Fatalf("%d properties, want %d", len(ps.Property), len(Properties))
	}
	for i, p := range ps.Property {
		want := Properties[i]
		if ps.Key(p) != want.FullKey() || p.Type != want.Type || p.UserConfigurable == nil || !*p.UserConfigurable {
			t.Errorf("property %d = %s type %s, want %s type %s, user-configurable", i, ps.Key(p), p.Type, want.FullKey(), want.Type)
		}
		if (p.Default == nil && want.Default != "") || (p.Default != nil && *p.Default != want.Default) {
			t.Errorf("property %s default = %v, want %q", want.Key, p.Default, want.Default)
		}
		if want.Password != (p.Password != nil && *p.Password) {
			t.Errorf("property %s password = %v", want.Key, p.Password)
		}
	}
	if tr := vs.VirtualHardware[0].Transport; tr == nil || !strings.Contains(*tr, "iso") || !strings.Contains(*tr, "com.vmware.guestInfo") {
		t.Errorf("transport = %v, want both iso and guestinfo", tr)
	}

	spec, err := env.ToConfigSpec()
	if err != nil {
		t.Fatalf("descriptor to config spec: %v", err)
	}
	if spec.NumCPUs != 2 || spec.MemoryMB != 2048 {
		t.Errorf("cpus/memory = %d/%d", spec.NumCPUs, spec.MemoryMB)
	}
	kinds := map[string]int{}
	for _, dc := range spec.DeviceChange {
		switch d := dc.GetVirtualDeviceConfigSpec().Device.(type) {
		case *types.VirtualVmxnet3:
			kinds["vmxnet3"]++
		case *types.VirtualDisk:
			kinds["disk"]++
			if d.CapacityInBytes != DefaultHardware.DiskCapacity {
				t.Errorf("disk capacity = %d", d.CapacityInBytes)
			}
		case *types.VirtualLsiLogicController:
			kinds["scsi"]++
		case *types.VirtualCdrom:
			kinds["cdrom"]++
		}
	}
	for _, k := range []string{"vmxnet3", "disk", "scsi", "cdrom"} {
		if kinds[k] != 1 {
			t.Errorf("%d %s devices, want 1 (%v)", kinds[k], k, kinds)
		}
	}
}

func TestDescriptorRejectsBadOptions(t *testing.T) {
	good := DescriptorOptions{Name: "c", DiskFile: "d.vmdk", DiskSize: 10, Hardware: DefaultHardware}
	for name, mod := range map[string]func(*DescriptorOptions){
		"no name":      func(o *DescriptorOptions) { o.Name = "" },
		"path in file": func(o *DescriptorOptions) { o.DiskFile = "../d.vmdk" },
		"no size":      func(o *DescriptorOptions) { o.DiskSize = 0 },
		"no cpu":       func(o *DescriptorOptions) { o.Hardware.CPUs = 0 },
		"odd capacity": func(o *DescriptorOptions) { o.Hardware.DiskCapacity = 1<<30 + 1 },
	} {
		o := good
		mod(&o)
		if _, err := Descriptor(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Descriptor(good); err != nil {
		t.Fatal(err)
	}
}

func TestImportIntoVCSim(t *testing.T) {
	path := buildTestOVA(t)
	simulator.Test(func(ctx context.Context, c *vim25.Client) {
		finder := find.NewFinder(c)
		dc, err := finder.DefaultDatacenter(ctx)
		if err != nil {
			t.Fatal(err)
		}
		finder.SetDatacenter(dc)
		ds, err := finder.DefaultDatastore(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pool, err := finder.ResourcePool(ctx, "DC0_H0/Resources")
		if err != nil {
			t.Fatal(err)
		}
		folders, err := dc.Folders(ctx)
		if err != nil {
			t.Fatal(err)
		}
		values := map[string]string{}
		var mapping []importer.Property
		for _, p := range Properties {
			values[p.FullKey()] = "v-" + p.Key
			mapping = append(mapping, importer.Property{KeyValue: importer.KeyValue{Key: p.FullKey(), Value: "v-" + p.Key}})
		}
		imp := importer.Importer{
			Client: c, Finder: finder, Datacenter: dc, Datastore: ds, ResourcePool: pool, Folder: folders.VmFolder,
			Archive: &importer.TapeArchive{Path: path, Opener: importer.Opener{Client: c}}, // vcsim records no digest of uploads, so the importer's own
			// manifest reader is checked below instead.
			Log: func(string) (int, error) { return 0, nil },
		}
		name := "continuum-01"
		ref, err := imp.Import(ctx, "*.ovf", importer.Options{Name: &name, PropertyMapping: mapping,
			NetworkMapping: []importer.Network{{Name: "VM Network", Network: "VM Network"}}})
		if err != nil {
			t.Fatalf("import: %v", err)
		}
		if err := imp.ReadManifest("continuum.ovf"); err != nil {
			t.Fatalf("importer cannot read the manifest: %v", err)
		}
		if sum := imp.Manifest["continuum-disk1.vmdk"]; sum == nil || sum.Algorithm != "SHA256" || len(sum.Checksum) != 64 {
			t.Errorf("importer's view of the manifest = %+v", imp.Manifest)
		}
		var vm mo.VirtualMachine
		if err := object.NewVirtualMachine(c, *ref).Properties(ctx, *ref, []string{"config"}, &vm); err != nil {
			t.Fatal(err)
		}
		hw := vm.Config.Hardware
		if hw.NumCPU != 2 || hw.MemoryMB != 2048 {
			t.Errorf("cpus/memory = %d/%d", hw.NumCPU, hw.MemoryMB)
		}
		kinds := map[string]int{}
		for _, d := range hw.Device {
			switch d.(type) {
			case *types.VirtualVmxnet3:
				kinds["vmxnet3"]++
			case *types.VirtualDisk:
				kinds["disk"]++
			case *types.VirtualCdrom:
				kinds["cdrom"]++
			}
		}
		if kinds["vmxnet3"] != 1 || kinds["disk"] != 1 || kinds["cdrom"] != 1 {
			t.Errorf("devices = %v, want one vmxnet3 NIC, one disk, one CD-ROM", kinds)
		}
		if vm.Config.VAppConfig == nil {
			t.Fatal("imported VM has no vApp configuration")
		}
		got := map[string]types.VAppPropertyInfo{}
		for _, p := range vm.Config.VAppConfig.GetVmConfigInfo().Property {
			got[p.ClassId+"."+p.Id] = p
		}
		for _, p := range Properties {
			g, ok := got[p.FullKey()]
			switch {
			case !ok:
				t.Errorf("property %s missing on the VM", p.FullKey())
			case g.Value != values[p.FullKey()] || g.Type != p.Type || g.DefaultValue != p.Default || g.UserConfigurable == nil || !*g.UserConfigurable:
				t.Errorf("property %s = %+v", p.FullKey(), g)
			}
		}
	})
}
