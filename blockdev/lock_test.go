package blockdev_test

import "github.com/qbmond/qbmond/blockdev"

// lockGraph holds g's graph lock until unlock is called, for a test that
// works on the graph step by step between its own checks: a goroutine
// waits inside g.Do, so lk is valid until unlock.
func lockGraph(g *blockdev.Graph) (lk *blockdev.Locked, unlock func()) {
	got := make(chan *blockdev.Locked)
	release := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.Do(func(lk *blockdev.Locked) error {
			got <- lk
			<-release
			return nil
		})
	}()
	return <-got, func() {
		close(release)
		<-done
	}
}
