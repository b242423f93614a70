// Package proxy is the CDP proxy: the source side cuts restore points,
// compresses, encrypts and throttles; the target side verifies, decrypts,
// decompresses and delivers to the target filter. It imports internal/wire
// and internal/model.
package proxy
