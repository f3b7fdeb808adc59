package backend

import (
	"fmt"
	"io/fs"
	"strings"
	"unicode/utf8"
)

// Clean returns key without leading or trailing slashes, the canonical
// form of a certmagic key ("" is the root).
func Clean(key string) string {
	return strings.Trim(key, "/")
}

// Under reports whether key lies strictly below dir, component-wise: "a/b"
// is under "a", "ab/c" is not. Everything but "" is under "".
func Under(dir, key string) bool {
	if dir == "" {
		return key != ""
	}
	return len(key) > len(dir) && key[len(dir)] == '/' && strings.HasPrefix(key, dir)
}

// Child returns the full key of the direct child of dir that key lies
// under ("a/b" for dir "a" and key "a/b/c/d"), and whether key is under dir.
func Child(dir, key string) (string, bool) {
	if !Under(dir, key) {
		return "", false
	}
	start := 0
	if dir != "" {
		start = len(dir) + 1
	}
	if i := strings.IndexByte(key[start:], '/'); i >= 0 {
		return key[:start+i], true
	}
	return key, true
}

// Parents returns the directories above key, nearest last: "a", "a/b" for
// "a/b/c".
func Parents(key string) []string {
	var dirs []string
	for i := 0; i < len(key); i++ {
		if key[i] == '/' {
			dirs = append(dirs, key[:i])
		}
	}
	return dirs
}

// CheckKey reports whether key, in the form Clean returns ("" is the
// root), reaches a server that takes keys as URL paths and lists them in
// JSON (Consul, Vault) as itself: valid UTF-8 (JSON would turn other bytes
// into U+FFFD), and no empty, "." or ".." component (HTTP servers and
// clients clean those away, so "a/../b" would address "b"). Its errors wrap
// fs.ErrInvalid.
func CheckKey(key string) error {
	if key == "" {
		return nil
	}
	if !utf8.ValidString(key) {
		return fmt.Errorf("%w: not valid UTF-8", fs.ErrInvalid)
	}
	for c := range strings.SplitSeq(key, "/") {
		if c == "" || c == "." || c == ".." {
			return fmt.Errorf("%w: empty, '.' or '..' path component", fs.ErrInvalid)
		}
	}
	return nil
}
