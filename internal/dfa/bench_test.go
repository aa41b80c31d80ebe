package dfa

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

const typicalPathPattern = "/api/v1/namespaces/[a-z0-9-]+/invoices/[0-9]+(/items)?"

func BenchmarkCompileTypicalPath(b *testing.B) {
	for b.Loop() {
		if _, err := Compile(typicalPathPattern, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// hundredAlternatives is an alternation of 100 distinct paths, as a policy that lists every
// endpoint of a service would have.
func hundredAlternatives() string {
	rng := rand.New(rand.NewPCG(7, 8))
	alts := make([]string, 100)
	for i := range alts {
		var name []byte
		for n := 4 + rng.IntN(6); n > 0; n-- {
			name = append(name, byte('a'+rng.IntN(26)))
		}
		alts[i] = fmt.Sprintf("/api/v%d/%s(/[0-9]+)?", 1+i%2, name)
	}
	return strings.Join(alts, "|")
}

func BenchmarkCompile100Alternatives(b *testing.B) {
	pattern := hundredAlternatives()
	opts := Options{MaxStates: 4096}
	d, err := Compile(pattern, opts)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := Compile(pattern, opts); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(d.NumStates()), "states")
}

func BenchmarkMatch(b *testing.B) {
	d, err := Compile(typicalPathPattern, Options{})
	if err != nil {
		b.Fatal(err)
	}
	input := []byte("/api/v1/namespaces/payments-prod-eu-west-1/invoices/12345678901234567890/items")
	if !d.Match(input) {
		b.Fatal("benchmark input does not match")
	}
	b.SetBytes(int64(len(input)))
	for b.Loop() {
		d.Match(input)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(input)), "ns/byte")
}
