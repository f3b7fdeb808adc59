package kong

// crash makes s behave as a process that died holding its locks: their
// leases are no longer refreshed and nothing is unlocked (tests).
func (s *Storage) crash() {
	s.held.Abandon()
}
