package ova

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// envFileIn finds the OVF environment in a directory (the ISO's root). An
// ISO 9660 volume without Rock Ridge shows its names in another case, with
// a version suffix, depending on how it was written and mounted.
func envFileIn(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("list %s: %w", dir, err)
	}
	for _, e := range entries {
		name := strings.ToLower(strings.TrimSuffix(e.Name(), ";1"))
		if name == "ovf-env.xml" || name == "ovf_env.xml" {
			return filepath.Join(dir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("no ovf-env.xml in %s: %w", dir, ErrNoEnvironment)
}

// readEnvDir reads and parses the OVF environment in dir.
func readEnvDir(dir string) (*Environment, error) {
	path, err := envFileIn(dir)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	env, err := ParseEnvironment(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return env, nil
}

// isVMware reports whether the DMI data says the machine is a VMware VM.
// Only then is the backdoor port probed: on other hypervisors and on bare
// metal that port may belong to something else.
func isVMware(sysVendorPath string) bool {
	b, err := os.ReadFile(sysVendorPath)
	return err == nil && strings.Contains(string(b), "VMware")
}

// errNoBackdoor means this machine has no VMware backdoor to ask.
var errNoBackdoor = errors.New("not a VMware virtual machine")
