package raftstore

import (
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// streamLayer is raft's stream layer over TCP, wrapped in TLS when a config
// is given. The same config serves both sides: its certificate is presented
// as server and as client, and peers are verified against its CAs.
type streamLayer struct {
	net.Listener
	advertise net.Addr
	tls       *tls.Config
}

// advertisable resolves the raft address and checks that peers can reach it
// as given: the address is both bound and advertised, so neither an
// unspecified host nor port 0 will do.
func advertisable(bind string) (*net.TCPAddr, error) {
	adv, err := net.ResolveTCPAddr("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("resolve raft address %q: %w", bind, err)
	}
	if adv.IP == nil || adv.IP.IsUnspecified() || adv.Port == 0 {
		return nil, fmt.Errorf("raft address %q is not advertisable: give a concrete host and port", bind)
	}
	return adv, nil
}

func newStreamLayer(bind string, tlsConf *tls.Config) (*streamLayer, error) {
	adv, err := advertisable(bind)
	if err != nil {
		return nil, err
	}
	var ln net.Listener
	if tlsConf != nil {
		ln, err = tls.Listen("tcp", bind, tlsConf)
	} else {
		ln, err = net.Listen("tcp", bind)
	}
	if err != nil {
		return nil, fmt.Errorf("listen on raft address %q: %w", bind, err)
	}
	return &streamLayer{Listener: ln, advertise: adv, tls: tlsConf}, nil
}

func (s *streamLayer) Addr() net.Addr { return s.advertise }

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if s.tls == nil {
		return d.Dial("tcp", string(addr))
	}
	td := &tls.Dialer{NetDialer: d, Config: s.tls}
	conn, err := td.Dial("tcp", string(addr))
	if err != nil {
		return nil, fmt.Errorf("dial raft peer %s: %w", addr, err)
	}
	return conn, nil
}
