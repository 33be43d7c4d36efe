package blockdev

import (
	"context"
	"errors"
	"fmt"
)

// HasCreate tells whether blockdev-create can create images of driver.
func HasCreate(driver string) bool {
	registryMu.RLock()
	defer registryMu.RUnlock()
	return registry[driver].create != nil
}

// CreateContext is what a Creator's Create gets: its options and a way to
// reach the nodes it writes the new image into.
type CreateContext struct {
	g     *Graph
	opts  Options
	user  string
	roots []*Child
}

// Options returns the create options of the driver's variant.
func (cc *CreateContext) Options() Options { return cc.opts }

// Graph returns the graph the image is created in.
func (cc *CreateContext) Graph() *Graph { return cc.g }

// OpenChild opens the BlockdevRef under key (a node-name, or an inline
// definition that becomes an implicit node) and attaches it to the create
// job with write and resize permission, sharing everything, as QEMU's
// image creation does. The edge is removed (and an implicit node closed)
// when Create returns. It takes the graph lock itself.
func (cc *CreateContext) OpenChild(ctx context.Context, key string) (*Child, error) {
	return WithLock(cc.g, func(lk *Locked) (*Child, error) {
		g := lk.g
		if g.closed {
			return nil, errors.New("the block layer is shutting down")
		}
		v, ok := cc.opts[key]
		if !ok || v == nil {
			return nil, fmt.Errorf("Parameter '%s' is missing", key)
		}
		tx := &openTx{}
		n, err := lk.resolveRef(ctx, tx, key, v, inherited{})
		if err != nil {
			g.rollback(tx)
			return nil, err
		}
		c, err := lk.AttachRoot(n, cc.user, PermConsistentRead|PermWrite|PermResize, PermAll)
		if err != nil {
			g.release(n)
			return nil, err
		}
		cc.roots = append(cc.roots, c)
		return c, nil
	})
}

// Create runs blockdev-create's work for driver with opts (the variant's
// members). user names the writer in permission errors (QEMU writes
// through an unnamed BlockBackend: "an unnamed block device"). The caller must not
// hold the graph lock.
func (g *Graph) Create(ctx context.Context, driver string, opts Options, user string) error {
	registryMu.RLock()
	cr := registry[driver].create
	registryMu.RUnlock()
	if cr == nil {
		return errors.New("Driver does not support blockdev-create")
	}
	cc := &CreateContext{g: g, opts: opts, user: user}
	defer g.Do(func(lk *Locked) error {
		for i := len(cc.roots) - 1; i >= 0; i-- {
			lk.DetachRoot(cc.roots[i])
		}
		return nil
	})
	return cr.Create(ctx, cc)
}

type backgroundKey struct{}

// WithBackground returns a copy of ctx under which Background calls f.
// The job that runs blockdev-create (package jobs) gives its
// Job.Background, so that a driver's Create reaches it without the
// drivers depending on the jobs package.
func WithBackground(ctx context.Context, f func()) context.Context {
	return context.WithValue(ctx, backgroundKey{}, f)
}

// Background marks the point where a Creator's Create first waits for
// lengthy I/O, where QEMU's coroutine would first yield: the job that
// runs it lets blockdev-create reply from here on, and the image is
// written in the background, as in QSD. A create function calls it once
// its target is open, before its first lengthy I/O. Outside a job (no
// WithBackground in ctx) it does nothing.
func Background(ctx context.Context) {
	if f, _ := ctx.Value(backgroundKey{}).(func()); f != nil {
		f()
	}
}
