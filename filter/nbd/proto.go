package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Protocol constants, named after the specification.
const (
	nbdMagic      = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic      = 0x49484156454f5054 // "IHAVEOPT"
	repMagic      = 0x0003e889045565a9
	requestMagic  = 0x25609513
	simpleMagic   = 0x67446698
	requestHdrLen = 28
	simpleHdrLen  = 16

	// handshake flags (server)
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1
	// client flags
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1

	// transmission flags
	tfHasFlags        = 1 << 0
	tfReadOnly        = 1 << 1
	tfSendFlush       = 1 << 2
	tfSendFUA         = 1 << 3
	tfSendTrim        = 1 << 5
	tfSendWriteZeroes = 1 << 6
	tfCanMultiConn    = 1 << 8

	optExportName     = 1
	optAbort          = 2
	optList           = 3
	optStartTLS       = 5
	optInfo           = 6
	optGo             = 7
	optStructuredRepl = 8

	repAck    = 1
	repServer = 2
	repInfo   = 3

	repErrUnsup   = 1<<31 + 1
	repErrInvalid = 1<<31 + 3
	repErrUnknown = 1<<31 + 6
	repErrTooBig  = 1<<31 + 9

	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6

	cmdFlagFUA    = 1 << 0
	cmdFlagNoHole = 1 << 1
	// flags a client may set without our advertising anything for them
	cmdFlagsKnown = cmdFlagFUA | cmdFlagNoHole | 1<<2 /* DF */ | 1<<3 /* REQ_ONE */

	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108
)

// MaxRequest is the largest READ or WRITE payload the server accepts; it is
// also the maximum block size advertised by NBD_INFO_BLOCK_SIZE.
const MaxRequest = 32 << 20

// maxOption is the largest option payload read into memory; names and
// descriptions are at most 4096 bytes by the specification, so anything
// larger is discarded (up to maxOptionDiscard) and refused as too big.
const (
	maxOption        = 16 << 10
	maxOptionDiscard = 1 << 20
	maxString        = 4096
)

// errBadMagic means the byte stream can no longer be framed.
var errBadMagic = errors.New("bad magic")

// request is one transmission-phase request header.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
}

// parseRequest decodes a 28-byte request header.
func parseRequest(b []byte) (request, error) {
	if len(b) < requestHdrLen {
		return request{}, fmt.Errorf("parse request header: %d bytes, need %d", len(b), requestHdrLen)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != requestMagic {
		return request{}, fmt.Errorf("parse request header: %w %#x", errBadMagic, m)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		cookie: binary.BigEndian.Uint64(b[8:16]),
		off:    binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// optionHeader is the fixed part of a client option: magic, option, length.
type optionHeader struct {
	opt    uint32
	length uint32
}

func parseOptionHeader(b []byte) (optionHeader, error) {
	if len(b) < 16 {
		return optionHeader{}, fmt.Errorf("parse option header: %d bytes, need 16", len(b))
	}
	if m := binary.BigEndian.Uint64(b[0:8]); m != optMagic {
		return optionHeader{}, fmt.Errorf("parse option header: %w %#x", errBadMagic, m)
	}
	return optionHeader{opt: binary.BigEndian.Uint32(b[8:12]), length: binary.BigEndian.Uint32(b[12:16])}, nil
}

// infoRequest is the payload of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

func parseInfoRequest(data []byte) (infoRequest, error) {
	if len(data) < 6 {
		return infoRequest{}, fmt.Errorf("parse info request: %d bytes, need at least 6", len(data))
	}
	n := binary.BigEndian.Uint32(data[0:4])
	if n > maxString || uint64(n)+6 > uint64(len(data)) {
		return infoRequest{}, fmt.Errorf("parse info request: name length %d does not fit in %d bytes", n, len(data))
	}
	name := string(data[4 : 4+n])
	rest := data[4+n:]
	count := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*count {
		return infoRequest{}, fmt.Errorf("parse info request: %d info types announced, %d bytes left", count, len(rest))
	}
	infos := make([]uint16, count)
	for i := range infos {
		infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return infoRequest{name: name, infos: infos}, nil
}

// cmdName names a command type for logs and metrics.
func cmdName(t uint16) string {
	switch t {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdDisc:
		return "disc"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdWriteZeroes:
		return "write_zeroes"
	}
	return "other"
}
