// Package pki holds the coordinator cluster's certificate authority: creating
// the CA at bootstrap, issuing node and component certificates, PEM helpers,
// CA fingerprints used to pin join tokens, and the TLS configurations of the
// raft transport (mutual TLS) and the HTTPS API. It imports only the standard
// library.
package pki
