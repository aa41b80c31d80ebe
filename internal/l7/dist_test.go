package l7

import (
	"math/rand/v2"
	"testing"
)

func TestPrivilegedDist(t *testing.T) {
	l := loadWithPool(t)
	r := rand.New(rand.NewPCG(1, 2))
	counts := map[string]int{}
	for i := range 3000 {
		raw := genRequest(r)
		got, _ := l.Judge(RuleKey{EndpointID: uint32(100 + i%len(ruleSetPool)), Port: 80}, raw)
		counts[got.Decision.String()+"/"+got.Reason.String()]++
	}
	t.Log(counts)
}
