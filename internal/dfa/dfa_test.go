package dfa

import (
	"errors"
	"math/rand/v2"
	"regexp"
	"regexp/syntax"
	"testing"
)

// realisticPatterns are the kinds of method, path and host patterns that policies carry.
var realisticPatterns = []string{
	"",
	"GET",
	"GET|HEAD",
	"(?i)get|head",
	"POST|PUT|PATCH|DELETE",
	"/v1/users",
	"/private/metrics",
	"/v1/invoices/[0-9]+",
	"/v1/invoices/[0-9]{2,5}",
	"/api/v1/.*",
	"/api/v1/(?s:.*)",
	"/a/(b|c)*/d",
	"/static/[^/]+\\.(css|js|png)",
	"/users/[a-z0-9_-]{3,16}/profile",
	"/v[12]/orders(/[0-9]+)?",
	"/files/.+",
	"/[^/]*/[^/]*",
	"(/[a-z]+)+/?",
	"/health(z|check)?",
	"/search\\?q=.*",
	"/\\w+/\\d+",
	"/\\S+",
	`/\p{L}+`,
	`/\p{Greek}+/[α-ω]*`,
	"/caf[eé]",
	"/€/.",
	"/😀+",
	"[[:alpha:]][[:alnum:]]*",
	"(?i)api\\.example\\.com",
	"(?i)[a-z0-9-]+\\.example\\.(com|org)",
	"([a-z0-9-]+\\.)*example\\.com",
	"(?i)straße|k",
	"api\\.example\\.com(:[0-9]{1,5})?",
	".",
	".*",
	"(?s).",
	"a.b",
	"[^a]",
	`\x{FFFD}`,
	`[^\x{FFFD}]+`,
	"^/anchored$",
	`\A/v1/[a-z]+\z`,
}

// compileBoth compiles pattern with Compile and, as the reference, Go's regexp anchored at both
// ends. It reports ok false when Go cannot compile the anchored form (patterns such as `\Qa`
// that the wrapping changes).
func compileBoth(t testing.TB, pattern string) (*DFA, *regexp.Regexp, bool) {
	t.Helper()
	d, err := Compile(pattern, Options{})
	if err != nil {
		t.Fatalf("Compile(%q): %v", pattern, err)
	}
	re, err := regexp.Compile("^(?:" + pattern + ")$")
	if err != nil {
		return d, nil, false
	}
	return d, re, true
}

// agree fails the test when d and re disagree on input.
func agree(t testing.TB, pattern string, d *DFA, re *regexp.Regexp, input []byte) {
	t.Helper()
	if got, want := d.Match(input), re.Match(input); got != want {
		t.Errorf("pattern %q, input %q: DFA matches = %v, regexp matches = %v", pattern, input, got, want)
	}
}

// differential compares d with re on inputs generated for the pattern: every string of up to two
// bytes when exhaustive, strings that match, near misses of them, random bytes, and walks through
// the DFA.
func differential(t *testing.T, rng *rand.Rand, pattern string, d *DFA, re *regexp.Regexp, rounds int, exhaustive bool) {
	t.Helper()
	if exhaustive {
		agree(t, pattern, d, re, nil)
		for a := range 256 {
			agree(t, pattern, d, re, []byte{byte(a)})
			for b := range 256 {
				agree(t, pattern, d, re, []byte{byte(a), byte(b)})
			}
		}
	}
	parsed, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		t.Fatal(err)
	}
	parsed = parsed.Simplify()
	for range rounds {
		s := sample(rng, parsed, nil)
		agree(t, pattern, d, re, s)
		for range 4 {
			s2 := mutate(rng, s)
			agree(t, pattern, d, re, s2)
			s = s2
		}
		agree(t, pattern, d, re, randomBytes(rng))
		w := walk(rng, d)
		for i := range len(w) + 1 {
			agree(t, pattern, d, re, w[:i])
		}
	}
}

func TestCompileAgreesWithRegexpOnRealisticPatterns(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, pattern := range realisticPatterns {
		t.Run(pattern, func(t *testing.T) {
			d, re, ok := compileBoth(t, pattern)
			if !ok {
				t.Fatalf("regexp cannot compile the anchored form of %q", pattern)
			}
			differential(t, rng, pattern, d, re, 300, !testing.Short())
		})
	}
}

func TestCompileAgreesWithRegexpOnGeneratedPatterns(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	n, tooBig := 600, 0
	if testing.Short() {
		n = 100
	}
	for range n {
		pattern := randomPattern(rng, 4)
		switch rng.IntN(8) {
		case 0:
			pattern = "^" + pattern
		case 1:
			pattern += "$"
		case 2:
			pattern = "(?i)" + pattern
		}
		d, err := Compile(pattern, Options{})
		if errors.Is(err, ErrTooManyStates) {
			tooBig++
			continue
		}
		if err != nil {
			t.Fatalf("Compile(%q): %v", pattern, err)
		}
		re := regexp.MustCompile("^(?:" + pattern + ")$")
		differential(t, rng, pattern, d, re, 40, false)
	}
	t.Logf("%d of %d generated patterns exceeded the state budget", tooBig, n)
	if tooBig > n/10 {
		t.Errorf("%d of %d generated patterns exceeded the state budget; the grammar should stay small", tooBig, n)
	}
}

func TestInvalidUTF8IsReadAsReplacementCharacterLikeRegexp(t *testing.T) {
	cases := []struct {
		pattern, input string
		want           bool
	}{
		{".", "\xff", true},
		{".", "\x80", true},
		{"[^/]", "\xc0", true},
		{".", "\xe2\x82", false},                   // a truncated sequence is two runes U+FFFD
		{"..", "\xe2\x82", true},                   //
		{".", "\xe2\x82\xac", true},                // the whole € is one rune
		{"...", "\xe2\x82\xac", false},             //
		{"a.b", "a\xe2\x82b", false},               // a broken sequence in the middle
		{"a..b", "a\xe2\x82b", true},               //
		{"/", "\xc0\xaf", false},                   // overlong '/' is not '/'
		{"..", "\xc0\xaf", true},                   // but two invalid bytes
		{"[^/]+", "\xc0\xaf", true},                //
		{"...", "\xed\xa0\x80", true},              // a surrogate half is three invalid bytes
		{"....", "\xf4\x90\x80\x80", true},         // so is anything above U+10FFFF, four
		{`\x{FFFD}`, "\xff", true},                 // an invalid byte is U+FFFD itself
		{`\x{FFFD}`, "\xef\xbf\xbd", true},         //
		{`[^\x{FFFD}]`, "\xff", false},             //
		{"[a-z]", "\xff", false},                   //
		{`[\x{80}-\x{10FFFF}]+`, "\xff\xfe", true}, // a class holding U+FFFD
		{`\p{Greek}`, "\xce", false},               // α cut short
		{`\p{Greek}.`, "α\xce", true},              //
		{"/users/.*", "/users/\xff\xfe", true},     //
		{".", "\n", false},                         // and the usual newline rule
		{"(?s).", "\n", true},                      //
	}
	for _, c := range cases {
		t.Run(c.pattern+" "+c.input, func(t *testing.T) {
			d, re, _ := compileBoth(t, c.pattern)
			if got := re.MatchString(c.input); got != c.want {
				t.Fatalf("Go's regexp: %q on %q = %v, this test expects %v", c.pattern, c.input, got, c.want)
			}
			if got := d.Match([]byte(c.input)); got != c.want {
				t.Errorf("DFA: %q on %q = %v, want %v", c.pattern, c.input, got, c.want)
			}
		})
	}
}

func TestCaseInsensitivePatternsMatchEveryCaseFolding(t *testing.T) {
	cases := []struct {
		pattern string
		match   []string
		miss    []string
	}{
		{"(?i)get", []string{"get", "GET", "GeT"}, []string{"GETS", "gex", ""}},
		{"(?i)k", []string{"k", "K", "\u212a"}, []string{"kk", "x"}}, // U+212A KELVIN SIGN
		{"(?i)s", []string{"s", "S", "ſ"}, []string{"ß"}},            // U+017F LONG S
		{"(?i)api\\.example\\.com", []string{"API.Example.COM", "api.example.com"}, []string{"api-example.com"}},
		{"(?i:é)/x", []string{"é/x", "É/x"}, []string{"é/X", "e/x"}},
	}
	for _, c := range cases {
		t.Run(c.pattern, func(t *testing.T) {
			d, re, _ := compileBoth(t, c.pattern)
			for _, s := range c.match {
				if !d.Match([]byte(s)) || !re.MatchString(s) {
					t.Errorf("%q should match %q: DFA %v, regexp %v", c.pattern, s, d.Match([]byte(s)), re.MatchString(s))
				}
			}
			for _, s := range c.miss {
				if d.Match([]byte(s)) || re.MatchString(s) {
					t.Errorf("%q should not match %q: DFA %v, regexp %v", c.pattern, s, d.Match([]byte(s)), re.MatchString(s))
				}
			}
		})
	}
}

func TestEmptyPatternMatchesOnlyTheEmptyString(t *testing.T) {
	d, err := Compile("", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Match(nil) || !d.Match([]byte{}) {
		t.Error("empty pattern does not match the empty string")
	}
	for _, s := range []string{"a", "/", "\x00", "\n", "\xff"} {
		if d.Match([]byte(s)) {
			t.Errorf("empty pattern matches %q", s)
		}
	}
}

func TestAnchorsAtTheEndsChangeNothing(t *testing.T) {
	cases := []struct{ anchored, plain string }{
		{"^/v1/users$", "/v1/users"},
		{"^(GET|HEAD)$", "GET|HEAD"},
		{`\A/x\z`, "/x"},
		{"^a|^b", "a|b"},
		{"(^a$)|(^b$)", "a|b"},
		{"(?:^)?a", "a"},
		{"^", ""},
		{"$", ""},
		{"^$", ""},
		{"$^", ""},
		{"^^a$$", "a"},
	}
	for _, c := range cases {
		t.Run(c.anchored, func(t *testing.T) {
			got := mustMarshal(t, c.anchored)
			want := mustMarshal(t, c.plain)
			if string(got) != string(want) {
				t.Errorf("%q and %q compile to different tables", c.anchored, c.plain)
			}
			d, re, _ := compileBoth(t, c.anchored)
			differential(t, rand.New(rand.NewPCG(5, 6)), c.anchored, d, re, 50, false)
		})
	}
}

// FuzzCompileMatchesRegexp checks that whenever Compile accepts a pattern, the DFA and Go's
// regexp agree on the input, and that the table survives an encoding round trip.
func FuzzCompileMatchesRegexp(f *testing.F) {
	inputs := []string{"", "a", "/v1/users", "/v1/invoices/123", "GET", "API.example.com", "\xff", "/é/\xe2\x82", "\n"}
	for i, p := range realisticPatterns {
		f.Add(p, []byte(inputs[i%len(inputs)]))
	}
	f.Add(`\x{FFFD}+`, []byte("\xff\xef\xbf\xbd\xc0"))
	f.Add("(a|b)*a(a|b){3}", []byte("abababba"))
	f.Add(`\bx`, []byte("x"))
	f.Fuzz(func(t *testing.T, pattern string, input []byte) {
		if len(pattern) > 256 {
			return
		}
		d, err := Compile(pattern, Options{})
		if err != nil {
			if errors.Is(err, ErrUnsupported) || errors.Is(err, ErrTooManyStates) {
				return
			}
			if _, perr := syntax.Parse(pattern, syntax.Perl); perr == nil {
				t.Fatalf("Compile(%q) failed but the pattern parses: %v", pattern, err)
			}
			return
		}
		re, err := regexp.Compile("^(?:" + pattern + ")$")
		if err != nil {
			return // the wrapping changed the pattern, as `\Qa` does
		}
		agree(t, pattern, d, re, input)
		b, err := d.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var d2 DFA
		if err := d2.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		if d2.Match(input) != d.Match(input) {
			t.Fatal("decoded DFA disagrees with the original")
		}
	})
}
