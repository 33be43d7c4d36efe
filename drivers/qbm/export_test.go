package qbm

// SetTmpSuffix replaces the random part of the temporary descriptor's
// name for a test; the returned function restores it.
func SetTmpSuffix(f func() string) (restore func()) {
	old := tmpSuffix
	tmpSuffix = f
	return func() { tmpSuffix = old }
}
