package dfa

import "testing"

// mustMarshal compiles pattern with the default options and returns its encoding.
func mustMarshal(t testing.TB, pattern string) []byte {
	t.Helper()
	d, err := Compile(pattern, Options{})
	if err != nil {
		t.Fatalf("Compile(%q): %v", pattern, err)
	}
	b, err := d.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary(%q): %v", pattern, err)
	}
	return b
}
