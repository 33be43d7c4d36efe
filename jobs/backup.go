package jobs

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockcopy"
	"github.com/qbmond/qbmond/qapi"
)

// blockdev-backup and drive-backup: a point-in-time copy of a node into a
// target, as QEMU 7.2's backup job makes it. A copy-before-write filter
// goes above the source: a guest write first copies the clusters it is
// about to change to the target, so the target gets the content of the
// moment the job was created; the job copies the other clusters in the
// background (sync full: all; top: what the source itself allocates;
// bitmap: what a dirty bitmap has; none: nothing, the target only keeps
// what writes would change, the image-fleecing pattern).
//
// With a bitmap, the bitmap is frozen for the job and a successor records
// the writes meanwhile; at the end, as bitmap-mode says, the bitmap
// becomes the successor (its bits were copied: on-success after success,
// always) or gets the successor merged back (nothing is lost: after a
// failure, never), and with always after a failure the clusters not
// copied are added back.

// backupJob is a backup's state.
type backupJob struct {
	b          *BlockJob
	source     *blockdev.Node
	target     *blockdev.Node
	cbw        *blockdev.Node
	bc         *blockcopy.State
	sync       string
	bitmap     *blockdev.DirtyBitmap
	bitmapMode string
	length     int64
	frozen     bool // the bitmap has a successor
	compress   bool // the target's clusters are written compressed
}

// txStep is a prepared action of a transaction.
type txStep struct {
	commit, abort, clean func()
	job                  *Job // a job to begin once the transaction has committed
}

// prepareBackupLocked prepares a blockdev-backup or drive-backup action:
// the checks, the copy-before-write filter and the job, created but not
// started (QEMU's do_backup_common and backup_job_create). The control
// lock is held too.
func (m *Manager) prepareBackupLocked(ctx context.Context, lk *blockdev.Locked, act *qapi.TransactionAction, txn *Txn) (*txStep, error) {
	// a is what both actions have; drive is drive-backup's own.
	var a *qapi.BackupCommon
	var targetName string
	var drive *qapi.DriveBackup
	if act.DriveBackup != nil {
		drive = &act.DriveBackup.Data
		a, targetName = &drive.BackupCommon, drive.Target
	} else {
		a, targetName = &act.BlockdevBackup.Data.BackupCommon, act.BlockdevBackup.Data.Target
	}
	bs := lk.Lookup(a.Device)
	if bs == nil {
		return nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", a.Device, a.Device)
	}
	if drive == nil && lk.Lookup(targetName) == nil {
		return nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", targetName, targetName)
	}
	// The source stays drained until the transaction is over (QEMU's
	// prepare and clean): jobs on it pause meanwhile, and the new job
	// begins paused.
	undrain := lk.Drain(bs)
	ok := false
	defer func() {
		if !ok {
			undrain()
		}
	}()
	var target *blockdev.Node
	var dropTarget func()
	if drive != nil {
		var err error
		if target, dropTarget, err = openDriveBackupTarget(ctx, lk, bs, drive); err != nil {
			return nil, err
		}
	} else if target = lk.Lookup(targetName); target == nil {
		return nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", targetName, targetName)
	}
	_, spec, err := checkBackup(lk, bs, target, a)
	if err != nil {
		if dropTarget != nil {
			dropTarget()
		}
		return nil, err
	}
	spec.Txn = txn
	j, err := m.createBlockLocked(lk, spec)
	if dropTarget != nil {
		dropTarget() // the job holds the target now, or nothing does
	}
	if err != nil {
		return nil, err
	}
	ok = true
	return &txStep{
		job:   j,
		clean: undrain,
		abort: func() {
			// The job's abort and clean-up take the graph lock.
			lk.Unlocked(func() {
				if finish := m.cancelCtl(j, true); finish != nil {
					finish()
				}
			})
		},
	}, nil
}

// checkBackup is do_backup_common's checks, then the spec of the job.
func checkBackup(lk *blockdev.Locked, bs, target *blockdev.Node, a *qapi.BackupCommon) (*backupJob, BlockSpec, error) {
	var spec BlockSpec
	sync := string(a.Sync)
	if sync == "bitmap" || sync == "incremental" {
		if a.Bitmap == nil {
			return nil, spec, fmt.Errorf("must provide a valid bitmap name for '%s' sync mode", sync)
		}
	}
	mode := string(qapi.Deref(a.BitmapMode))
	if sync == "incremental" {
		if a.BitmapMode != nil && mode != "on-success" {
			return nil, spec, errors.New("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'")
		}
		sync, mode = "bitmap", "on-success"
	}
	var bm *blockdev.DirtyBitmap
	if a.Bitmap != nil {
		if bm = bs.DirtyBitmap(*a.Bitmap); bm == nil {
			return nil, spec, fmt.Errorf("Bitmap '%s' could not be found", *a.Bitmap)
		}
		if mode == "" {
			return nil, spec, errors.New("Bitmap sync mode must be given when providing a bitmap")
		}
		if err := bm.Check(blockdev.CheckAllowReadOnly); err != nil {
			return nil, spec, err
		}
		if sync == "none" {
			return nil, spec, errors.New("sync mode 'none' does not produce meaningful bitmap outputs")
		}
		if mode == "never" && sync != "bitmap" {
			return nil, spec, fmt.Errorf("Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '%s'", sync)
		}
	}
	if a.Bitmap == nil && a.BitmapMode != nil {
		return nil, spec, errors.New("Cannot specify bitmap sync mode without a bitmap")
	}
	// backup_job_create
	if bs == target {
		return nil, spec, errors.New("Source and target cannot be the same")
	}
	compress := a.Compress != nil && *a.Compress
	if compress && !target.SupportsCompressedWrites() {
		return nil, spec, errors.New("Compression is not supported for this drive ")
	}
	if err := bs.Blocker(lk); err != nil {
		return nil, spec, err
	}
	if err := target.Blocker(lk); err != nil {
		return nil, spec, err
	}
	if p := a.XPerf; p != nil {
		if p.MaxWorkers != nil && (*p.MaxWorkers < 1 || *p.MaxWorkers > math.MaxInt32) {
			return nil, spec, fmt.Errorf("max-workers must be between 1 and %d", math.MaxInt32)
		}
		if p.MaxChunk != nil && *p.MaxChunk < 0 {
			return nil, spec, errors.New("max-chunk must be zero (which means no limit) or positive")
		}
	}
	bj := &backupJob{source: bs, target: target, sync: sync, bitmap: bm, bitmapMode: mode, length: bs.Length(),
		compress: compress}
	manFin, manDis := manualFlags(a.AutoFinalize, a.AutoDismiss)
	id := ""
	if a.JobID != nil {
		id = *a.JobID
	}
	speed := int64(0)
	if a.Speed != nil {
		speed = *a.Speed
	}
	var onSrc, onTgt OnError = OnErrorReport, OnErrorReport
	if a.OnSourceError != nil {
		onSrc = OnError(*a.OnSourceError)
	}
	if a.OnTargetError != nil {
		onTgt = OnError(*a.OnTargetError)
	}
	spec = BlockSpec{
		Spec: Spec{ID: id, Type: "backup", ManualFinalize: manFin, ManualDismiss: manDis,
			Run: bj.run, CopiesInBackground: true,
			Hooks: Hooks{
				Commit: func(*Job) { bj.cleanupBitmap(true) },
				Abort:  func(*Job) { bj.cleanupBitmap(false) },
				Clean:  bj.clean,
			}},
		Speed:         speed,
		OnError:       onSrc,
		OnTargetError: onTgt,
		Before:        func(lk *blockdev.Locked, b *BlockJob) error { return bj.before(lk, b, a.FilterNodeName) },
		Setup:         bj.setup,
		Undo:          func(lk *blockdev.Locked, _ *BlockJob) { bj.undo(lk) },
	}
	return bj, spec, nil
}

// before is the part of backup_job_create before the job exists: the
// bitmap frozen, the sizes compared, the filter inserted.
func (bj *backupJob) before(lk *blockdev.Locked, b *BlockJob, filterName *string) error {
	bj.b = b
	if bm := bj.bitmap; bm != nil {
		if bj.bitmapMode != "never" {
			if err := bm.Check(blockdev.CheckDefault); err != nil {
				return err
			}
		}
		if err := bm.CreateSuccessor(lk); err != nil {
			return err
		}
		bj.frozen = true
	}
	if bj.target.Length() != bj.length {
		return errors.New("Source and target image have different sizes")
	}
	opts := blockdev.Options{"driver": "copy-before-write", "file": bj.source.Name(), "target": bj.target.Name(),
		"read-only": false}
	if filterName != nil {
		opts["node-name"] = *filterName
	}
	cbw, err := lk.AppendFilter(context.Background(), bj.source, opts)
	if err != nil {
		return fmt.Errorf("Could not create node: %w", err)
	}
	bj.cbw = cbw
	src, ok := cbw.Driver().(interface{ BlockCopy() *blockcopy.State })
	if !ok {
		return errors.New("copy-before-write: no block copy")
	}
	bj.bc = src.BlockCopy()
	if bj.compress {
		bj.bc.SetCompress()
	}
	return nil
}

// setup is the end of backup_job_create once the job exists.
func (bj *backupJob) setup(lk *blockdev.Locked, b *BlockJob) error {
	if err := b.Created(lk, bj.cbw, 0, blockdev.PermAll); err != nil {
		return err
	}
	if _, err := b.AddNode(lk, bj.target, "target", 0, blockdev.PermAll); err != nil {
		return err
	}
	j := b.Job()
	bj.bc.SetProgress(func(n int64) { j.ProgressUpdate(uint64(n)) })
	return nil
}

// undo takes away what before did, when the job cannot start.
func (bj *backupJob) undo(lk *blockdev.Locked) {
	if bj.frozen {
		bj.frozen = false
		bj.bitmap.Reclaim(lk)
	}
	bj.dropFilter(lk)
}

func (bj *backupJob) dropFilter(lk *blockdev.Locked) {
	f := bj.cbw
	if f == nil {
		return
	}
	bj.cbw = nil
	bj.b.DropFilter(context.Background(), lk, f)
}

// cleanupBitmap is QEMU's backup_cleanup_sync_bitmap.
func (bj *backupJob) cleanupBitmap(ok bool) {
	if !bj.frozen {
		return
	}
	g := bj.b.Graph()
	g.Do(func(lk *blockdev.Locked) error {
		bj.frozen = false
		bm := bj.bitmap
		if (ok || bj.bitmapMode == "always") && bj.bitmapMode != "never" {
			bm.Abdicate(lk)
		} else {
			bm.Reclaim(lk)
		}
		if !ok && bj.bitmapMode == "always" {
			// What was not copied is still to be backed up.
			bm.MergeBits(bj.bc.Bitmap())
		}
		return nil
	})
}

func (bj *backupJob) clean(*Job) {
	g := bj.b.Graph()
	g.Do(func(lk *blockdev.Locked) error {
		bj.b.release(lk)
		bj.dropFilter(lk)
		return nil
	})
}

// run is QEMU's backup_run: the copy bitmap set up by sync mode, then the
// background copy (or, with sync none, nothing until the job is
// cancelled).
func (bj *backupJob) run(ctx context.Context, j *Job) error {
	b := bj.b
	bits := bj.bc.Bitmap()
	if bj.sync == "bitmap" {
		bits.Clear()
		_ = bits.Merge(bj.bitmap.Bits()) // same size: cannot fail
	}
	j.SetProgressRemaining(uint64(bits.Count()))
	if bits.Count() == 0 && bj.sync != "none" {
		return nil // nothing to copy: the job ends before the command replies
	}
	j.Background()
	if bj.sync == "top" {
		// What the source does not allocate itself needs no copy.
		src := bj.cbw.Child("file")
		for off := int64(0); off < bj.length; {
			if j.IsCancelled() {
				return context.Canceled
			}
			if err := j.PausePoint(); err != nil {
				return err
			}
			st, err := src.BlockStatus(ctx, off, bj.length-off)
			if err != nil {
				return ioError(err)
			}
			n := max(st.Length, 1)
			if st.Flags&blockdev.StatusAllocated == 0 {
				c := bj.bc.ClusterSize()
				// Whole clusters only: a cluster partly allocated is
				// copied.
				s, e := (off+c-1)/c*c, (off+n)/c*c
				if off+n >= bj.length {
					e = bj.length
				}
				if e > s {
					bits.Reset(s, e-s)
					j.SetProgressRemaining(uint64(bits.Count()))
				}
			}
			off += n
		}
	}
	if bj.sync == "none" {
		for !j.IsCancelled() {
			if err := j.Sleep(1 << 40); err != nil {
				return err
			}
		}
		return nil
	}
	chunk := int64(blockcopy.MaxChunk)
	for {
		if err := b.RateLimitWait(); err != nil {
			return err
		}
		if j.IsCancelled() {
			return nil
		}
		off := bits.NextDirty(0, -1)
		if off < 0 {
			return nil
		}
		before := bits.Count()
		err := bj.bc.Copy(ctx, off, chunk)
		if err != nil {
			if errors.Is(err, context.Canceled) && j.IsCancelled() {
				return err
			}
			var se *blockcopy.SourceError
			if b.ErrorAction(err, errors.As(err, &se)) == ActionReport {
				return ioError(err)
			}
			continue // retry, after the pause for "stop"
		}
		if d := before - bits.Count(); d > 0 {
			b.Processed(d)
		}
	}
}

// openDriveBackupTarget creates (unless mode is existing) and opens the
// target image drive-backup names (QEMU's drive_backup_prepare): of the
// source's format unless format says otherwise, backed by the source's
// backing file for sync top and by the source itself for sync none. The
// returned function drops the caller's hold on it.
func openDriveBackupTarget(ctx context.Context, lk *blockdev.Locked, bs *blockdev.Node, a *qapi.DriveBackup) (*blockdev.Node, func(), error) {
	existing := qapi.Deref(a.Mode) == qapi.NewImageModeExisting
	format := ""
	if a.Format != nil {
		format = *a.Format
	} else if !existing {
		format = bs.DriverName()
	}
	if err := bs.Blocker(lk); err != nil {
		return nil, nil, err
	}
	var source *blockdev.Node
	setBacking := false
	switch a.Sync {
	case "top":
		if source = bs.SkipFilters().BackingNode(); source == nil {
			a.Sync = qapi.MirrorSyncModeFull
		}
	case "none":
		source, setBacking = bs, true
	}
	if !existing {
		backing, backingFmt := "", ""
		if source != nil {
			backing, backingFmt = source.Filename(), source.DriverName()
		}
		if err := blockdev.CreateImage(ctx, format, a.Target, bs.Length(), backing, backingFmt); err != nil {
			return nil, nil, err
		}
	}
	if format == "" {
		var err error
		if format, err = blockdev.ProbeFormat(a.Target); err != nil {
			return nil, nil, err
		}
	}
	opts := blockdev.Options{"driver": format, "discard": "unmap", "detect-zeroes": "unmap",
		"file": map[string]any{"driver": "file", "filename": a.Target}}
	if setBacking {
		opts["backing"] = nil
	}
	n, hold, err := lk.OpenHeld(ctx, opts, "drive-backup")
	if err != nil {
		return nil, nil, err
	}
	drop := func() { lk.DetachRoot(hold) }
	if setBacking {
		if err := lk.SetBacking(ctx, n, source); err != nil {
			drop()
			return nil, nil, err
		}
	}
	return n, drop, nil
}
