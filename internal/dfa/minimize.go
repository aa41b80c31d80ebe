package dfa

// minimize returns the minimal DFA of a in canonical form: byte classes are the columns that the
// minimal DFA distinguishes, numbered by smallest byte; the dead state is 0 and the other states
// are numbered in breadth-first order from the start state, visiting classes in order. Since the
// minimal DFA of a language is unique up to renaming states, equal languages give equal tables.
func (a *automaton) minimize() *DFA {
	k := a.nclass
	blockOf, nblocks := hopcroft(len(a.accept), k, a.trans, a.accept)

	// One representative state per block, and the transitions between blocks.
	rep := make([]int32, nblocks)
	for i := range rep {
		rep[i] = -1
	}
	for s, blk := range blockOf {
		if rep[blk] < 0 {
			rep[blk] = int32(s)
		}
	}
	btrans := make([]int32, nblocks*k)
	for blk, s := range rep {
		for c := range k {
			btrans[blk*k+c] = blockOf[a.trans[int(s)*k+c]]
		}
	}

	// Final byte classes: construction classes with equal columns merge.
	column := make([]byte, 0, 4*nblocks)
	finalOf := make([]int, k) // construction class -> final class
	index := map[string]int{}
	var firstOf []int // final class -> a construction class in it
	d := &DFA{}
	for c := range 256 {
		cc := int(a.classOf[c])
		column = column[:0]
		for blk := range nblocks {
			t := btrans[blk*k+cc]
			column = append(column, byte(t), byte(t>>8), byte(t>>16), byte(t>>24))
		}
		f, ok := index[string(column)]
		if !ok {
			f = len(firstOf)
			index[string(column)] = f
			firstOf = append(firstOf, cc)
		}
		finalOf[cc] = f
		d.Classes[c] = uint8(f)
	}
	d.NumClasses = len(firstOf)

	// Canonical state numbers.
	number := make([]int32, nblocks)
	for i := range number {
		number[i] = -1
	}
	dead := blockOf[0]
	number[dead] = DeadState
	order := []int32{dead}
	if start := blockOf[a.start]; start != dead {
		number[start] = 1
		order = append(order, start)
	}
	for i := 1; i < len(order); i++ {
		blk := order[i]
		for _, cc := range firstOf {
			if t := btrans[int(blk)*k+cc]; number[t] < 0 {
				number[t] = int32(len(order))
				order = append(order, t)
			}
		}
	}

	d.Start = uint16(number[blockOf[a.start]])
	d.Accept = make([]bool, len(order))
	d.Next = make([]uint16, len(order)*d.NumClasses)
	for i, blk := range order {
		d.Accept[i] = a.accept[rep[blk]]
		for f, cc := range firstOf {
			d.Next[i*d.NumClasses+f] = uint16(number[btrans[int(blk)*k+cc]])
		}
	}
	return d
}

// hopcroft partitions the n states of a complete DFA over k symbols into classes of equivalent
// states (Hopcroft's algorithm, O(n·k·log n)) and returns each state's class and the class count.
func hopcroft(n, k int, trans []int32, accept []bool) ([]int32, int) {
	// Inverse transitions: the states that symbol a takes to t are
	// src[off[a*n+t]:off[a*n+t+1]].
	off := make([]int32, n*k+1)
	for s := range n {
		for a := range k {
			off[a*n+int(trans[s*k+a])+1]++
		}
	}
	for i := 1; i < len(off); i++ {
		off[i] += off[i-1]
	}
	src := make([]int32, n*k)
	fill := make([]int32, n*k)
	copy(fill, off[:n*k])
	for s := range n {
		for a := range k {
			i := a*n + int(trans[s*k+a])
			src[fill[i]] = int32(s)
			fill[i]++
		}
	}

	// The partition: block b holds elems[blocks[b].start:blocks[b].end]; loc is the inverse of
	// elems. Start from {rejecting, accepting}.
	type span struct{ start, end int32 }
	elems := make([]int32, 0, n)
	for s := range n {
		if !accept[s] {
			elems = append(elems, int32(s))
		}
	}
	nreject := int32(len(elems))
	for s := range n {
		if accept[s] {
			elems = append(elems, int32(s))
		}
	}
	loc := make([]int32, n)
	blockOf := make([]int32, n)
	var blocks []span
	for _, sp := range []span{{0, nreject}, {nreject, int32(n)}} {
		if sp.start == sp.end {
			continue
		}
		for i := sp.start; i < sp.end; i++ {
			loc[elems[i]] = i
			blockOf[elems[i]] = int32(len(blocks))
		}
		blocks = append(blocks, sp)
	}
	marked := make([]int32, len(blocks))
	inWork := make([]bool, len(blocks))
	var work []int32
	for b := range blocks {
		work = append(work, int32(b))
		inWork[b] = true
	}

	var splitter, touched []int32
	for len(work) > 0 {
		b := work[len(work)-1]
		work = work[:len(work)-1]
		inWork[b] = false
		splitter = append(splitter[:0], elems[blocks[b].start:blocks[b].end]...)
		for a := range k {
			touched = touched[:0]
			for _, t := range splitter {
				i := a*n + int(t)
				for _, s := range src[off[i]:off[i+1]] {
					y := blockOf[s]
					if marked[y] == 0 {
						touched = append(touched, y)
					}
					// Move s to the marked front of its block.
					from, to := loc[s], blocks[y].start+marked[y]
					o := elems[to]
					elems[to], loc[s] = s, to
					elems[from], loc[o] = o, from
					marked[y]++
				}
			}
			for _, y := range touched {
				m := marked[y]
				marked[y] = 0
				size := blocks[y].end - blocks[y].start
				if m == size {
					continue
				}
				z := int32(len(blocks))
				blocks = append(blocks, span{blocks[y].start, blocks[y].start + m})
				blocks[y].start += m
				for i := blocks[z].start; i < blocks[z].end; i++ {
					blockOf[elems[i]] = z
				}
				marked = append(marked, 0)
				inWork = append(inWork, false)
				// Hopcroft's rule: when y waits already, both halves must; otherwise the
				// smaller half is enough.
				if inWork[y] || m <= size-m {
					work = append(work, z)
					inWork[z] = true
				} else {
					work = append(work, y)
					inWork[y] = true
				}
			}
		}
	}
	return blockOf, len(blocks)
}
