// Package wire is the data-plane framing shared by filter and proxy:
// versioned, length-prefixed, checked frames, the messages they carry (the
// handshake, writes, markers, points and their acknowledgements) and the
// point payload codec (extent list, chunked compression, optional
// AES-256-GCM sealing).
//
// A frame is a fixed 9-byte header (magic "CW", version, type, flags,
// payload length), the payload, and a CRC-32C over header and payload.
// On a TLS connection the CRC is left out (FlagUnchecked, the trailer is
// zero): the TLS records' AEAD already authenticates every byte, and a
// reader accepts an unchecked frame only from a TLS stream. A writer
// leaves it out only after its peer said it reads such frames: each side
// of a TLS Conn sends a skippable Features frame ahead of its first
// message, which an older reader passes over, so peers of different
// releases keep talking (checked) during a rolling upgrade. A connection
// between a host's filter and a proxy may instead leave TLS after the
// Hello exchange for integrity frames, whose trailer is a GMAC tag under a
// key from the TLS exporter (FlagTagged, integrity.go): data in clear,
// every frame authenticated, when a traffic rule asks for it.
// Encoding is hand-written with encoding/binary; readers and writers reuse
// their buffers. A big Write or Point keeps its read buffer instead of a
// copy; a reader that gives it back with Release (on a connection made
// WithFrameReuse) has later frames read into it, and points can be encoded
// into and decoded from a caller's buffer (PointOptions.Buf), so a steady
// stream does not allocate, zero and fault in fresh memory per frame.
// Connections made by DialTLS and TLSListener write a message's TLS
// records in a few system calls rather than one per record (coalesce.go).
// Anything malformed is an error and the caller drops the connection:
// there is no resynchronisation inside a stream.
//
// It imports only the standard library, klauspost/compress and
// internal/bufpool.
package wire
