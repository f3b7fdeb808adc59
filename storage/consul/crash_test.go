package consul

// crash makes the instance behave as if its process died while holding
// its locks: sessions are no longer renewed, nothing is released, and the
// client reference is dropped. Tests use it to check takeover.
func (s *Storage) crash() {
	s.st.mu.Lock()
	s.st.crashed = true
	s.st.locks = nil
	s.st.mu.Unlock()
	s.st.sessions.Abandon()
	_ = s.release()
}
