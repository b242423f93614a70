// Package wire is the data-plane framing shared by filter and proxy:
// versioned, length-prefixed, checked frames, the messages they carry (the
// handshake, writes, markers, points and their acknowledgements) and the
// point payload codec (extent list, chunked compression, optional
// AES-256-GCM sealing).
//
// A frame is a fixed 9-byte header (magic "CW", version, type, flags,
// payload length), the payload, and a CRC-32C over header and payload.
// Encoding is hand-written with encoding/binary; readers and writers reuse
// their buffers. Anything malformed is an error and the caller drops the
// connection: there is no resynchronisation inside a stream.
//
// It imports only the standard library and klauspost/compress.
package wire
