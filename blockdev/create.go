package blockdev

import (
	"context"
	"errors"
	"fmt"
)

// CreateFunc creates an image for blockdev-create. It runs in the create
// job, without the graph lock; cc.Options() holds the driver's variant of
// BlockdevCreateOptions (without "driver"), already validated by the
// schema. Errors carry QEMU's text.
type CreateFunc func(ctx context.Context, cc *CreateContext) error

var createRegistry = map[string]CreateFunc{}

// RegisterCreate makes blockdev-create available for a driver. It panics on
// a duplicate, like RegisterDriver.
func RegisterCreate(name string, f CreateFunc) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if f == nil {
		panic("blockdev: RegisterCreate " + name + " with a nil function")
	}
	if _, dup := createRegistry[name]; dup {
		panic("blockdev: RegisterCreate called twice for driver " + name)
	}
	createRegistry[name] = f
}

// HasCreate tells whether blockdev-create can create images of driver.
func HasCreate(driver string) bool {
	registryMu.RLock()
	defer registryMu.RUnlock()
	return createRegistry[driver] != nil
}

// CreateContext is what a CreateFunc gets: its options and a way to reach
// the nodes it writes the new image into.
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
// when the CreateFunc returns. It takes the graph lock itself.
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
	f := createRegistry[driver]
	registryMu.RUnlock()
	if f == nil {
		return errors.New("Driver does not support blockdev-create")
	}
	cc := &CreateContext{g: g, opts: opts, user: user}
	defer g.Do(func(lk *Locked) error {
		for i := len(cc.roots) - 1; i >= 0; i-- {
			lk.DetachRoot(cc.roots[i])
		}
		return nil
	})
	return f(ctx, cc)
}
