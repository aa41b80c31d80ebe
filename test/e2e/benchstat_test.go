package e2e_test

import "testing"

// TestMedianCI95 checks the ranks of the confidence interval against the binomial tables: for n
// values, the k-th smallest and largest, k the largest with P(Binomial(n, ½) ≤ k-1) ≤ 2.5 %.
func TestMedianCI95(t *testing.T) {
	for _, c := range []struct{ n, k int }{{5, 1}, {6, 1}, {7, 1}, {8, 1}, {9, 2}, {10, 2}, {20, 6}, {30, 10}, {40, 14}} {
		v := make([]float64, c.n)
		for i := range v {
			v[i] = float64(i + 1)
		}
		mid, low, high := medianCI95(v)
		if low != float64(c.k) || high != float64(c.n-c.k+1) {
			t.Errorf("n=%d: interval [%v, %v], want ranks %d and %d", c.n, low, high, c.k, c.n-c.k+1)
		}
		if want := float64(c.n+1) / 2; mid != want {
			t.Errorf("n=%d: median %v, want %v", c.n, mid, want)
		}
	}
}
