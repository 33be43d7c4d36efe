package jobs

import (
	"context"
	"errors"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/qapi"
)

// blockdevCreate is blockdev-create: a job of type "create", finalised
// automatically but dismissed by the client, as in QEMU, whose progress
// goes from 0 to 1 of 1 when the driver's create function returns
// (successful or not).
func (m *Manager) blockdevCreate(ctx context.Context, g *blockdev.Graph, a *qapi.BlockdevCreateArgs) error {
	// The options stay generic: the driver reads its own.
	opts, err := blockdev.DecodeOptions(a.Options)
	if err != nil {
		return err
	}
	driver, _, err := opts.String("driver")
	if err != nil {
		return err
	}
	delete(opts, "driver")
	if !blockdev.HasCreate(driver) {
		// Refused before any job exists, as QEMU does.
		return errors.New("Driver does not support blockdev-create")
	}
	user := "an unnamed block device" // the image is written through a BlockBackend of its own
	_, err = m.Start(ctx, Spec{
		ID:            a.JobID,
		Type:          "create",
		ManualDismiss: true,
		Run: func(ctx context.Context, j *Job) error {
			j.SetProgressRemaining(1)
			// The driver's create function marks where the job goes on
			// in the background (blockdev.Background).
			err := g.Create(blockdev.WithBackground(ctx, j.Background), driver, opts, user)
			j.ProgressUpdate(1)
			return err
		},
	})
	return err
}
