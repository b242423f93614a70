package vsphere_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/continuum-cdp/continuum/vcsim"
	"github.com/continuum-cdp/continuum/vsphere"
)

// buildGovc compiles the unmodified govc of vsphere/internal/govc.
func buildGovc(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "govc")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(gobin, "build", "-o", bin, "./internal/govc")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build govc: %v\n%s", err, out)
	}
	return bin
}

func govc(t *testing.T, bin string, srv *vcsim.Server, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(),
		"GOVC_URL="+srv.SDKURL(), "GOVC_USERNAME="+vcsim.Username, "GOVC_PASSWORD="+vcsim.Password, "GOVC_INSECURE=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("govc %s: %v", strings.Join(args, " "), err)
	}
	return out
}

type govcVMInfo struct {
	VirtualMachines []struct {
		Name   string `json:"name"`
		Config struct {
			Hardware struct {
				Device []struct {
					Key             int32  `json:"key"`
					CapacityInBytes int64  `json:"capacityInBytes"`
					Type            string `json:"_typeName"`
				} `json:"device"`
			} `json:"hardware"`
			ExtraConfig []struct {
				Key   string `json:"key"`
				Value any    `json:"value"`
			} `json:"extraConfig"`
		} `json:"config"`
	} `json:"virtualMachines"`
}

func govcDisks(t *testing.T, bin string, srv *vcsim.Server, vm string) map[int32]int64 {
	t.Helper()
	var info govcVMInfo
	if err := json.Unmarshal(govc(t, bin, srv, "vm.info", "-json", vm), &info); err != nil {
		t.Fatalf("vm.info %s: %v", vm, err)
	}
	if len(info.VirtualMachines) != 1 {
		t.Fatalf("vm.info %s: %d VMs", vm, len(info.VirtualMachines))
	}
	disks := map[int32]int64{}
	for _, d := range info.VirtualMachines[0].Config.Hardware.Device {
		if d.Type == "VirtualDisk" || d.CapacityInBytes > 0 {
			disks[d.Key] = d.CapacityInBytes
		}
	}
	return disks
}

func TestGovcSeesReplicasAndPolicy(t *testing.T) {
	bin := buildGovc(t)
	e := newEnv(t, vcsim.Options{ProtectedVMs: 3, ProxyVMs: -1})
	st, err := e.c.InstallFilter(e.ctx, e.inv.ClusterByName(vcsim.SourceClusterName).MoRef)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		name := vcsim.ProtectedVMName(i)
		spec := e.replicaSpec(t, name)
		if _, err := e.c.EnsureReplica(e.ctx, spec); err != nil {
			t.Fatal(err)
		}
		if err := e.c.ApplyPolicy(e.ctx, spec.SourceVM, st.ProfileID); err != nil {
			t.Fatal(err)
		}

		src := govcDisks(t, bin, e.srv, name)
		rep := govcDisks(t, bin, e.srv, spec.Name)
		if len(src) != i+1 || len(rep) != len(src) {
			t.Fatalf("%s: source disks %v, replica disks %v", name, src, rep)
		}
		for k, c := range src {
			if rep[k] != c {
				t.Fatalf("%s disk %d: replica capacity %d, source %d", name, k, rep[k], c)
			}
		}

		var ls []struct {
			Name       string `json:"name"`
			PolicyName string `json:"policyName"`
			ID         struct {
				ObjectType string `json:"objectType"`
			} `json:"id"`
		}
		if err := json.Unmarshal(govc(t, bin, e.srv, "vm.policy.ls", "-json", "-vm", name), &ls); err != nil {
			t.Fatal(err)
		}
		disks := 0
		for _, ent := range ls {
			if ent.ID.ObjectType != "virtualDiskId" {
				continue
			}
			disks++
			if ent.PolicyName != vsphere.DefaultProfileName {
				t.Fatalf("%s %s: policy %q, want %q", name, ent.Name, ent.PolicyName, vsphere.DefaultProfileName)
			}
		}
		if disks != i+1 {
			t.Fatalf("%s: govc lists %d disks", name, disks)
		}
	}
	out := string(govc(t, bin, e.srv, "storage.policy.ls"))
	if strings.Count(out, vsphere.DefaultProfileName) != 1 {
		t.Fatalf("storage.policy.ls:\n%s", out)
	}
}
