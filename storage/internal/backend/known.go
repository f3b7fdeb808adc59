package backend

import "sync"

// KnownMax bounds Known: past it, an entry is dropped for each new one.
const KnownMax = 4096

// Known remembers the version (Consul's ModifyIndex, Vault's KV version)
// of values a node stored or loaded, so that Store can overwrite such a
// key with one conditional write and no conflict check first: if the key
// still has that version, it is a value, unchanged since, so nothing lies
// below it and no directory above it is a value (Store refuses both). An
// entry is only a guess; the conditional write tells whether it holds.
// The zero value is ready; at most KnownMax keys are kept.
type Known struct {
	mu sync.Mutex
	v  map[string]uint64
}

// Get returns key's version, if known.
func (m *Known) Get(key string) (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.v[key]
	return v, ok
}

// Set records version v of key (0: nothing is recorded).
func (m *Known) Set(key string, v uint64) {
	if v == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.v == nil {
		m.v = make(map[string]uint64)
	}
	if _, ok := m.v[key]; !ok && len(m.v) >= KnownMax {
		for old := range m.v {
			delete(m.v, old)
			break
		}
	}
	m.v[key] = v
}

// Forget drops key.
func (m *Known) Forget(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.v, key)
}

// Len is how many keys are known.
func (m *Known) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.v)
}
