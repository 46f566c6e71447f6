package netmgr

// WithStepHook calls f at each named step of an operation (the Step* constants); tests only.
func WithStepHook(f func(step string)) Option { return func(m *Manager) { m.testStep = f } }
