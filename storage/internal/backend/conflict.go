package backend

import (
	"fmt"
	"io/fs"
	"syscall"
)

// Caddy's file storage cannot hold a value and a directory under one name,
// so neither may a caddy-acme storage: `caddy storage export` writes every
// key into a tar archive, which could not be extracted (or imported into a
// file storage) if "a" were both. Store refuses the two conflicting cases
// with the errors the file storage returns for them, checked with
// errors.Is:
//
//   - Store("a") while keys exist under "a/" (a directory): ErrIsDir, which
//     matches fs.ErrExist and syscall.EEXIST (the file storage's rename
//     onto the directory fails with EEXIST);
//   - Store("a/b") or Store("a/b/c") while "a" is a value: ErrUnderValue,
//     which matches syscall.ENOTDIR (the file storage's MkdirAll fails with
//     ENOTDIR).
//
// Both are *fs.PathError with Op "store" and Path the key being stored.

// ErrIsDir is Store's error for key when it is a directory.
func ErrIsDir(key string) error {
	return &fs.PathError{Op: "store", Path: key, Err: fmt.Errorf("keys exist under it (a directory): %w", syscall.EEXIST)}
}

// ErrUnderValue is Store's error for key when value, a directory above it,
// is a value.
func ErrUnderValue(key, value string) error {
	return &fs.PathError{Op: "store", Path: key, Err: fmt.Errorf("%s is a value, not a directory: %w", value, syscall.ENOTDIR)}
}
