package consul

import "github.com/acmekit/caddy-acme/storage/internal/backend"

// TLS is the storage's TLS settings (the tls field).
type TLS = backend.TLS
