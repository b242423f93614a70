package nbd_test

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/continuum-cdp/continuum/filter/nbd"
)

// Serve one sparse file as the export "disk0" on a loopback port.
func Example() {
	dir, err := os.MkdirTemp("", "nbd-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	disk, err := nbd.OpenFile(filepath.Join(dir, "disk0.img"), 64<<20)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer disk.Close()

	srv := nbd.NewServer(slog.New(slog.DiscardHandler))
	if err := srv.AddExport(nbd.Export{Name: "disk0", Description: "first disk", Backend: disk}); err != nil {
		fmt.Println(err)
		return
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	fmt.Println(nbd.URI("127.0.0.1:10809", "disk0"), srv.Exports())
	// Clients (qemu-io, nbdcopy, fio) now connect to nbd.URI(l.Addr().String(), "disk0").
	srv.Close()
	fmt.Println(<-done)
	// Output:
	// nbd://127.0.0.1:10809/disk0 [disk0]
	// <nil>
}
