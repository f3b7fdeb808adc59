package backend

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Sealer encrypts values with AES-256-GCM, authenticating the storage key
// with each value. A nil *Sealer stores values as given, except a value
// that starts with the magic of a sealed value or of an escaped one, which
// it stores escaped (plainMagic before it) so that it reads back as it was
// stored instead of as an encrypted value.
type Sealer struct {
	aead cipher.AEAD
}

// sealMagic starts every sealed value, so that a plain value read with a key
// configured is reported as such rather than as tampering.
var sealMagic = []byte("caddy-acme:aes256gcm:v1:")

// plainMagic starts a plain value that a nil Sealer escaped, because it
// starts with sealMagic or plainMagic.
var plainMagic = []byte("caddy-acme:plain:v1:")

// ErrOpen is returned (wrapped) when a sealed value does not decrypt.
var ErrOpen = errors.New("wrong encryption key or tampered value")

// ParseKey decodes a 32-byte key given as base64 (standard or URL alphabet,
// with or without padding) or hex. Its errors never contain the key.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if len(s) == 64 {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != 32 {
				return nil, fmt.Errorf("decodes to %d bytes, want 32 (generate one with: openssl rand -base64 32)", len(b))
			}
			return b, nil
		}
	}
	return nil, errors.New("not base64 or hex (generate one with: openssl rand -base64 32)")
}

// NewSealer returns a Sealer for a 32-byte key.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("key is %d bytes, want 32", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal returns value encrypted for storage under key.
func (s *Sealer) Seal(key string, value []byte) []byte {
	if s == nil {
		if bytes.HasPrefix(value, sealMagic) || bytes.HasPrefix(value, plainMagic) {
			return append(append(make([]byte, 0, len(plainMagic)+len(value)), plainMagic...), value...)
		}
		return value
	}
	out := make([]byte, len(sealMagic)+s.aead.NonceSize(), len(sealMagic)+s.aead.NonceSize()+len(value)+s.aead.Overhead())
	copy(out, sealMagic)
	nonce := out[len(sealMagic):]
	if _, err := rand.Read(nonce); err != nil {
		panic("caddy-acme: reading random nonce: " + err.Error()) // crypto/rand never fails on supported systems
	}
	return s.aead.Seal(out, nonce, value, []byte(key))
}

// OpenedLen is the length of the value Open returns for a stored value of
// n bytes that starts with head (at least its first 20 bytes, or all of it
// if shorter): for a Stat that does not read the whole value.
func (s *Sealer) OpenedLen(n int64, head []byte) int64 {
	if s == nil {
		if bytes.HasPrefix(head, plainMagic) {
			return n - int64(len(plainMagic))
		}
		return n
	}
	return max(n-int64(len(sealMagic)+s.aead.NonceSize()+s.aead.Overhead()), 0)
}

// Open returns the plain value of data stored under key. Without a key
// (a nil Sealer), a sealed value is an error rather than bytes returned as
// if they were the value.
func (s *Sealer) Open(key string, data []byte) ([]byte, error) {
	if s == nil {
		if bytes.HasPrefix(data, sealMagic) {
			return nil, fmt.Errorf("reading %s: value is encrypted: set the storage's encryption_key", key)
		}
		return bytes.TrimPrefix(data, plainMagic), nil
	}
	if !bytes.HasPrefix(data, sealMagic) {
		return nil, fmt.Errorf("decrypting %s: value is not encrypted (written before encryption_key was set, or by another program)", key)
	}
	data = data[len(sealMagic):]
	if len(data) < s.aead.NonceSize() {
		return nil, fmt.Errorf("decrypting %s: %w", key, ErrOpen)
	}
	nonce, sealed := data[:s.aead.NonceSize()], data[s.aead.NonceSize():]
	plain, err := s.aead.Open(nil, nonce, sealed, []byte(key))
	if err != nil {
		return nil, fmt.Errorf("decrypting %s: %w", key, ErrOpen)
	}
	if plain == nil {
		plain = []byte{}
	}
	return plain, nil
}

// String never shows the key.
func (s *Sealer) String() string {
	if s == nil {
		return "none"
	}
	return "aes-256-gcm (key redacted)"
}
