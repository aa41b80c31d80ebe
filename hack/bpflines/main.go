// Command bpflines attributes `perf script` samples in a loaded BPF program to its source lines.
//
//	perf script -i perf.data -C 1 -F ip,sym,symoff | go run ./hack/bpflines -prog l7_fast   # root
//
// It finds the loaded program named -prog (the most recently loaded one of that name), reads the
// kernel's JIT layout of it (each function's address and length, and the JIT address of each BPF
// line-information record) and counts each sample of bpf_prog_<tag>_<function>+<offset> against the
// last line that starts at or before it. Run it while the program that perf sampled is still loaded,
// or against another load of the same object (the JIT lays out the same code the same way).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

type line struct {
	addr uint64
	loc  string
	text string
}

func main() {
	prog := flag.String("prog", "l7_fast", "name of the loaded BPF program")
	top := flag.Int("top", 40, "lines to print")
	flag.Parse()

	info, err := find(*prog)
	if err != nil {
		log.Fatal(err)
	}
	ksyms, ok1 := info.JitedKsymAddrs()
	jitLines, ok2 := info.JitedLineInfos()
	if !ok1 || !ok2 {
		log.Fatal("the kernel gives no JIT layout for this program (not root, or JIT off)")
	}
	funcs, err := info.FuncInfos()
	if err != nil {
		log.Fatal(err)
	}
	lineInfos, err := info.LineInfos()
	if err != nil {
		log.Fatal(err)
	}
	start := map[string]uint64{} // function name -> JIT address
	for i, f := range funcs {
		if i < len(ksyms) {
			start[f.Func.Name] = uint64(ksyms[i])
		}
	}
	var lines []line
	for i, li := range lineInfos {
		if i >= len(jitLines) {
			break
		}
		file := li.Line.FileName()
		if k := strings.LastIndex(file, "/"); k >= 0 {
			file = file[k+1:]
		}
		lines = append(lines, line{jitLines[i], fmt.Sprintf("%s:%d", file, li.Line.LineNumber()), strings.TrimSpace(li.Line.Line())})
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i].addr < lines[j].addr })

	sample := regexp.MustCompile(`bpf_prog_[0-9a-f]+_(\w+)\+0x([0-9a-f]+)`)
	byLine, byFunc := map[string]int{}, map[string]int{}
	text := map[string]string{}
	total := 0
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		m := sample.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		base, ok := start[m[1]]
		if !ok {
			continue // another program
		}
		off, _ := strconv.ParseUint(m[2], 16, 64)
		a := base + off
		k := sort.Search(len(lines), func(i int) bool { return lines[i].addr > a }) - 1
		if k < 0 {
			continue
		}
		byLine[lines[k].loc]++
		text[lines[k].loc] = lines[k].text
		byFunc[m[1]]++
		total++
	}
	if err := sc.Err(); err != nil {
		log.Fatal(err)
	}
	if total == 0 {
		log.Fatalf("no sample of %s's functions on standard input", *prog)
	}
	fmt.Printf("%d samples\n", total)
	for _, f := range sortedKeys(byFunc) {
		fmt.Printf("%6d %5.1f%%  %s\n", byFunc[f], 100*float64(byFunc[f])/float64(total), f)
	}
	fmt.Println()
	for i, l := range sortedKeys(byLine) {
		if i == *top {
			break
		}
		t := text[l]
		if len(t) > 80 {
			t = t[:80]
		}
		fmt.Printf("%6d %5.1f%%  %-22s %s\n", byLine[l], 100*float64(byLine[l])/float64(total), l, t)
	}
}

// find returns the most recently loaded program called name.
func find(name string) (*ebpf.ProgramInfo, error) {
	var id ebpf.ProgramID
	var found *ebpf.ProgramInfo
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := p.Info()
		p.Close()
		if err == nil && info.Name == name {
			found = info
		}
	}
	if found == nil {
		return nil, fmt.Errorf("no loaded BPF program called %q", name)
	}
	return found, nil
}

// sortedKeys orders m's keys by count, highest first.
func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	return keys
}
