package raftstore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// ClusterKeySize is the length of the cluster key (AES-256).
const ClusterKeySize = 32

// sealVersion is the first byte of every sealed value, so the format can
// change without guessing.
const sealVersion = 1

// sealer encrypts secrets with the cluster key before they enter the raft log.
type sealer struct {
	aead cipher.AEAD
}

func newSealer(key []byte) (*sealer, error) {
	if len(key) != ClusterKeySize {
		return nil, fmt.Errorf("cluster key is %d bytes, want %d", len(key), ClusterKeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	return &sealer{aead: aead}, nil
}

// seal returns version | nonce | ciphertext+tag. Nonces are random: the
// number of secrets sealed under one key stays far below the GCM limit.
func (s *sealer) seal(plain []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	out := make([]byte, 1+ns, 1+ns+len(plain)+s.aead.Overhead())
	out[0] = sealVersion
	if _, err := rand.Read(out[1 : 1+ns]); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	return s.aead.Seal(out, out[1:1+ns], plain, []byte{sealVersion}), nil
}

// ErrSealed is returned when a sealed value cannot be opened (wrong key,
// altered or truncated bytes).
var ErrSealed = errors.New("sealed value cannot be opened")

func (s *sealer) unseal(sealed []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(sealed) < 1+ns+s.aead.Overhead() {
		return nil, fmt.Errorf("unseal: %d bytes is too short: %w", len(sealed), ErrSealed)
	}
	if sealed[0] != sealVersion {
		return nil, fmt.Errorf("unseal: format version %d: %w", sealed[0], ErrSealed)
	}
	plain, err := s.aead.Open(nil, sealed[1:1+ns], sealed[1+ns:], []byte{sealVersion})
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", ErrSealed)
	}
	return plain, nil
}
