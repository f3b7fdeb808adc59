package redis

// crash makes s behave as if its process had died holding its locks: their
// leases are no longer refreshed and nothing is unlocked. For tests.
func (s *Storage) crash() {
	s.held.Abandon()
}
