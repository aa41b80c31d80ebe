package l7

import "testing"

func TestReleaseAtLeast(t *testing.T) {
	for _, c := range []struct {
		release string
		want    bool
	}{
		{"6.18.0-1-amd64", true},
		{"6.5.0", true},
		{"6.4.16-200.fc38.x86_64", false},
		{"5.15.0-91-generic", false},
		{"7.0", true},
		{"6", false},
		{"", false},
	} {
		if got := releaseAtLeast(c.release, 6, 5); got != c.want {
			t.Errorf("releaseAtLeast(%q, 6, 5) = %v, want %v", c.release, got, c.want)
		}
	}
}
