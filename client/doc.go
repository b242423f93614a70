// Package client is the Go client of the coordinator REST API, used by the
// CLI and by tests. It imports only internal/model.
package client
