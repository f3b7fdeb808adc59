package vault

// abandon stops refreshing every held lock without releasing any, as a
// crashed process would (for tests).
func (s *Storage) abandon() {
	s.held.Abandon()
}
