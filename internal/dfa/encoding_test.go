package dfa

import (
	"encoding/binary"
	"reflect"
	"testing"
)

func TestMarshalBinaryRoundTrips(t *testing.T) {
	for _, pattern := range realisticPatterns {
		t.Run(pattern, func(t *testing.T) {
			d, err := Compile(pattern, Options{})
			if err != nil {
				t.Fatal(err)
			}
			b, err := d.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			var got DFA
			if err := got.UnmarshalBinary(b); err != nil {
				t.Fatalf("UnmarshalBinary: %v", err)
			}
			if !reflect.DeepEqual(&got, d) {
				t.Errorf("decoded DFA differs from the original")
			}
			again, err := got.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if string(again) != string(b) {
				t.Errorf("re-encoding changes the bytes")
			}
		})
	}
}

func TestUnmarshalBinaryRejectsCorruptData(t *testing.T) {
	valid := mustMarshal(t, "/v1/invoices/[0-9]+") // 16 states, 11 classes
	header := len(encodingMagic) + 1 + 3           // three one-byte varints
	nextAt := header + 256 + 2                     // 16 states: two accept bytes
	edit := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), valid...))
	}
	cases := map[string][]byte{
		"empty":                    nil,
		"bad magic":                edit(func(b []byte) []byte { b[0] = 'X'; return b }),
		"future version":           edit(func(b []byte) []byte { b[4] = 2; return b }),
		"trailing byte":            append(append([]byte(nil), valid...), 0),
		"start out of range":       edit(func(b []byte) []byte { b[7] = 16; return b }),
		"zero classes":             edit(func(b []byte) []byte { b[6] = 0; return b }),
		"class id out of range":    edit(func(b []byte) []byte { b[header+'z'] = 11; return b }),
		"classes out of order":     edit(func(b []byte) []byte { b[header], b[header+'/'] = b[header+'/'], b[header]; return b }),
		"dead state accepts":       edit(func(b []byte) []byte { b[header+256] |= 1; return b }),
		"transition out of range":  edit(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[nextAt+2*20:], 16); return b }),
		"dead state has a way out": edit(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[nextAt:], 1); return b }),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			var d DFA
			if err := d.UnmarshalBinary(data); err == nil {
				t.Error("corrupt data accepted")
			}
		})
	}
	t.Run("every truncation", func(t *testing.T) {
		for n := range len(valid) {
			var d DFA
			if err := d.UnmarshalBinary(valid[:n]); err == nil {
				t.Fatalf("data cut to %d of %d bytes accepted", n, len(valid))
			}
		}
	})
	t.Run("accept bit past last state", func(t *testing.T) {
		b := mustMarshal(t, "a") // 3 states: one accept byte with 5 unused bits
		b[len(encodingMagic)+1+3+256] |= 0x80
		var d DFA
		if err := d.UnmarshalBinary(b); err == nil {
			t.Error("stray accept bit accepted")
		}
	})
	t.Run("failed decode leaves the receiver alone", func(t *testing.T) {
		var d DFA
		if err := d.UnmarshalBinary(valid); err != nil {
			t.Fatal(err)
		}
		before := d
		if err := d.UnmarshalBinary(valid[:10]); err == nil {
			t.Fatal("truncated data accepted")
		}
		if !reflect.DeepEqual(d, before) {
			t.Error("a failed UnmarshalBinary changed the DFA")
		}
	})
}
