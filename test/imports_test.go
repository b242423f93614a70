package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/continuum-cdp/continuum"

// allowedImports is DESIGN.md's import direction:
// cmd → appliance → {raftstore, vsphere, vcd, proxy, filter, client} → internal/wire → internal/model.
// A package may import its own subpackages and what is listed for it.
var allowedImports = map[string][]string{
	"internal/model":    {},
	"internal/pki":      {},
	"internal/netutil":  {},
	"internal/bufpool":  {},
	"internal/directio": {},
	"internal/agent":    {"internal/model", "internal/pki"},
	"internal/wire":     {"internal/model", "internal/bufpool"},
	"client":            {"internal/model"},
	"raftstore":         {"internal/model"},
	"vsphere":           {"internal/model"},
	"vcd":               {"internal/model"},
	"proxy":             {"internal/wire", "internal/model", "internal/pki", "internal/agent", "internal/bufpool"},
	"filter":            {"internal/wire", "internal/model", "internal/pki", "internal/agent", "internal/bufpool", "internal/directio"},
	"vcsim":             {"internal/model", "vsphere", "vcd"},
	"ova":               {"internal/model"},
	"appliance": {"raftstore", "vsphere", "vcd", "proxy", "filter", "client",
		"internal/wire", "internal/model", "internal/pki", "internal/netutil", "internal/agent"},
}

// owner returns the top-level area of a package path inside the module.
func owner(rel string) string {
	if strings.HasPrefix(rel, "internal/") {
		parts := strings.SplitN(rel, "/", 3)
		return parts[0] + "/" + parts[1]
	}
	return strings.SplitN(rel, "/", 2)[0]
}

type goPackage struct {
	ImportPath string
	Imports    []string
}

// violations lists every import that breaks allowedImports, and how many
// packages were subject to a rule.
func violations(pkgs []goPackage) (bad []string, checked int) {
	for _, p := range pkgs {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		from := owner(rel)
		allowed, ruled := allowedImports[from]
		if !ruled {
			continue // cmd/ and test/ may import everything
		}
		checked++
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			to := owner(strings.TrimPrefix(imp, module+"/"))
			if to == from || slices.Contains(allowed, to) {
				continue
			}
			bad = append(bad, fmt.Sprintf("%s imports %s: %s may import only %v", rel, imp, from, allowed))
		}
	}
	return bad, checked
}

func TestImportDirection(t *testing.T) {
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports", "./...")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p goPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	bad, checked := violations(pkgs)
	for _, b := range bad {
		t.Error(b)
	}
	if checked < 3 {
		t.Fatalf("only %d packages checked: go list found too little", checked)
	}
}

// The rule table is not vacuous: upward and sideways imports are caught,
// downward ones pass.
func TestImportRuleRejects(t *testing.T) {
	pkgs := []goPackage{
		{ImportPath: module + "/raftstore", Imports: []string{module + "/appliance"}},
		{ImportPath: module + "/internal/wire", Imports: []string{module + "/filter/journal"}},
		{ImportPath: module + "/proxy", Imports: []string{module + "/filter"}},
		{ImportPath: module + "/filter/target", Imports: []string{module + "/filter/journal", module + "/internal/wire"}},
		{ImportPath: module + "/cmd/continuum", Imports: []string{module + "/appliance"}},
	}
	bad, checked := violations(pkgs)
	if len(bad) != 3 || checked != 4 {
		t.Fatalf("want 3 violations among 4 ruled packages, got %d of %d: %v", len(bad), checked, bad)
	}
}
