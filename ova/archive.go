package ova

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Package describes the files of an OVA: the descriptor is written first, as
// OVF 1.0 requires, then the manifest, then the disk.
type Package struct {
	Name       string // base name: NAME.ovf, NAME.mf inside the archive
	Descriptor []byte
	DiskPath   string // VMDK on the local file system
	DiskName   string // its name inside the archive (matches the descriptor)
	// ModTime stamps every archive member, so that equal inputs give an
	// equal archive.
	ModTime time.Time
}

// Manifest renders an OVF manifest: one "SHA256(file)= hex" line per file.
func Manifest(digests [][2]string) []byte {
	var b strings.Builder
	for _, d := range digests {
		fmt.Fprintf(&b, "SHA256(%s)= %s\n", d[0], d[1])
	}
	return []byte(b.String())
}

// ParseManifest reads a manifest written by Manifest (or by VMware tools,
// which use the same form) into file name → lower-case hex SHA-256.
func ParseManifest(r io.Reader) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		algo, rest, ok := strings.Cut(line, "(")
		name, sum, ok2 := strings.Cut(rest, ")=")
		if !ok || !ok2 || algo != "SHA256" {
			return nil, fmt.Errorf("manifest line %d: want SHA256(name)= digest, got %q", n, line)
		}
		sum = strings.ToLower(strings.TrimSpace(sum))
		if b, err := hex.DecodeString(sum); err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("manifest line %d: bad SHA-256 digest %q", n, sum)
		}
		out[name] = sum
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	return out, nil
}

// WriteOVA writes the OVA (a tar archive) to w.
func WriteOVA(w io.Writer, p Package) error {
	if p.Name == "" || p.DiskName == "" || len(p.Descriptor) == 0 {
		return fmt.Errorf("write ova: name, disk name and descriptor are required")
	}
	disk, err := os.Open(p.DiskPath)
	if err != nil {
		return fmt.Errorf("write ova: open disk: %w", err)
	}
	defer disk.Close()
	st, err := disk.Stat()
	if err != nil {
		return fmt.Errorf("write ova: stat disk: %w", err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, disk); err != nil {
		return fmt.Errorf("write ova: hash disk %s: %w", p.DiskPath, err)
	}
	diskSum := hex.EncodeToString(h.Sum(nil))
	if _, err := disk.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("write ova: rewind disk: %w", err)
	}
	ovfName, mfName := p.Name+".ovf", p.Name+".mf"
	ovfSum := sha256.Sum256(p.Descriptor)
	mf := Manifest([][2]string{{ovfName, hex.EncodeToString(ovfSum[:])}, {p.DiskName, diskSum}})

	tw := tar.NewWriter(w)
	hdr := func(name string, size int64) *tar.Header {
		// USTAR with fixed owner and time: vSphere reads only USTAR.
		return &tar.Header{Name: name, Size: size, Mode: 0o644, ModTime: p.ModTime, Format: tar.FormatUSTAR,
			Uname: "root", Gname: "root", Typeflag: tar.TypeReg}
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{ovfName, p.Descriptor}, {mfName, mf}} {
		if err := tw.WriteHeader(hdr(f.name, int64(len(f.data)))); err != nil {
			return fmt.Errorf("write ova: header of %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return fmt.Errorf("write ova: %s: %w", f.name, err)
		}
	}
	if err := tw.WriteHeader(hdr(p.DiskName, st.Size())); err != nil {
		return fmt.Errorf("write ova: header of %s: %w", p.DiskName, err)
	}
	if _, err := io.Copy(tw, disk); err != nil {
		return fmt.Errorf("write ova: copy disk: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write ova: close archive: %w", err)
	}
	return nil
}

// BuildOVA renders the descriptor for the disk at diskPath and writes the
// OVA to out, through a temporary file so that a failure leaves no partial
// archive behind.
func BuildOVA(out, diskPath, version string, hw Hardware, modTime time.Time) error {
	st, err := os.Stat(diskPath)
	if err != nil {
		return fmt.Errorf("build ova: %w", err)
	}
	name := "continuum"
	diskName := name + "-disk1.vmdk"
	desc, err := Descriptor(DescriptorOptions{Name: name, Version: version, Hardware: hw, DiskFile: diskName, DiskSize: st.Size()})
	if err != nil {
		return fmt.Errorf("build ova: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".ova-*")
	if err != nil {
		return fmt.Errorf("build ova: %w", err)
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := WriteOVA(bw, Package{Name: name, Descriptor: desc, DiskPath: diskPath, DiskName: diskName, ModTime: modTime}); err != nil {
		tmp.Close()
		return fmt.Errorf("build ova %s: %w", out, err)
	}
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return fmt.Errorf("build ova %s: %w", out, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("build ova %s: %w", out, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("build ova: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("build ova: %w", err)
	}
	return nil
}
