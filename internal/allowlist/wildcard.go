package allowlist

// HasWildcard reports whether "*."+parent is an entry (parent normalised:
// lower case, punycode, no trailing dot), e.g. for the wildcard
// certificate that serves the names one label below parent. It does not
// allocate.
func (m *Matcher) HasWildcard(parent string) bool {
	if m == nil {
		return false
	}
	_, ok := m.suffixes[parent]
	return ok
}
