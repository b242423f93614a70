// Package wire is the data-plane framing shared by filter and proxy:
// versioned, length-prefixed, checked frames and the handshake.
package wire
