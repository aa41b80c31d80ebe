package dfa

import (
	"testing"
	"time"
)

func TestScratchSlow(t *testing.T) {
	pats := []string{`(?:\pL?){500}\pL{500}`, `(?:(?i)\pL?){300}`, `(?:\pL?){100}\pL{100}`, `(?:[^a]?){1000}[^b]{1000}`, `(\pL|\PN|\pN){0,500}`, `(?:[a-z]?){1000}[a-z]{1000}`, hundredAlternatives(), `(a|b)*a(a|b){9}`, `\pL+`, `(\pL|\pN|[-_.])+@(\pL|\pN|[-_.])+`}
	pats = append(pats, realisticPatterns...)
	for _, p := range pats {
		st := time.Now()
		d, err := Compile(p, Options{})
		n := 0
		if d != nil {
			n = d.NumStates()
		}
		if len(p) > 60 { p = p[:60] }
		t.Logf("%v %q %d %v", time.Since(st), p, n, err)
	}
}
