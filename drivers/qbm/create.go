package qbm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/qbmond/qbmond/blockdev"
)

// createOptions are BlockdevCreateOptionsQbm, checked.
type createOptions struct {
	size        int64
	image       string
	backingFile string
	backingFmt  string
	granularity uint64
	dirty       int64
}

func parseCreateOptions(o blockdev.Options) (*createOptions, error) {
	co := &createOptions{granularity: 65536}
	var err error
	var hasSize bool
	if co.size, hasSize, err = o.Int("size"); err != nil {
		return nil, err
	}
	if co.image, _, err = o.String("image"); err != nil {
		return nil, err
	}
	if co.image == "" && (!hasSize || co.size < 0) {
		return nil, errors.New("Invalid size specified for data image")
	}
	if co.image == "" && co.size%512 != 0 {
		return nil, errors.New("Image size must be a multiple of 512 bytes")
	}
	if co.image != "" {
		if err := checkPath(co.image); err != nil {
			return nil, err
		}
	}
	if co.backingFile, _, err = o.String("backing-file"); err != nil {
		return nil, err
	}
	if co.backingFmt, _, err = o.String("backing-fmt"); err != nil {
		return nil, err
	}
	if co.backingFmt != "" && co.backingFile == "" {
		return nil, errors.New("Backing format cannot be used without backing file")
	}
	if co.backingFile != "" {
		if err := checkPath(co.backingFile); err != nil {
			return nil, err
		}
	}
	if g, ok, err := o.Int("granularity"); err != nil {
		return nil, err
	} else if ok {
		if g < MinGranularity || g > MaxGranularity || g&(g-1) != 0 {
			return nil, errors.New("Granularity must be power of 2 and at least 512")
		}
		co.granularity = uint64(g)
	}
	if n, ok, err := o.Int("dirty-bitmaps"); err != nil {
		return nil, err
	} else if ok {
		if n < 0 || n > 65535 {
			return nil, errors.New("Invalid number of dirty bitmaps")
		}
		co.dirty = n
	}
	return co, nil
}

// create is blockdev-create for qbm: it creates the data image (unless an
// existing one is wrapped), the bitmap files beside the descriptor, and
// writes the descriptor into the file node.
func create(ctx context.Context, cc *blockdev.CreateContext) error {
	co, err := parseCreateOptions(cc.Options())
	if err != nil {
		return err
	}
	c, err := cc.OpenChild(ctx, "file")
	if err != nil {
		return err
	}
	blockdev.Background(ctx)
	descPath := c.Node().Filename()
	if strings.HasPrefix(descPath, "json:") {
		return errors.New("A QBM descriptor needs a plain file name")
	}
	d := &Driver{descPath: descPath}
	desc := &Descriptor{Version: 1, Creator: Creator}
	var created []string
	fail := func(err error) error {
		for _, name := range created {
			if p, rerr := d.resolve(name); rerr == nil {
				os.Remove(p)
			}
		}
		return err
	}
	taken := map[string]bool{}
	size := co.size
	if co.image != "" {
		path, err := d.resolve(co.image)
		if err != nil {
			return err
		}
		format, isize, err := imageInfo(path)
		if err != nil {
			return err
		}
		desc.Image, size = FileRef{File: co.image, Format: format}, isize
		taken[co.image] = true
	} else {
		name, err := newFile(descPath, "data", ".img", size, taken)
		if err != nil {
			return err
		}
		created = append(created, name)
		taken[name] = true
		desc.Image = FileRef{File: name, Format: "raw"}
	}
	size = (size + 511) &^ 511 // the node's length
	bmSize := BitmapFileSize(size, co.granularity)
	if co.backingFile != "" {
		name, err := newFile(descPath, "allocation", ".bitmap", bmSize, taken)
		if err != nil {
			return fail(err)
		}
		created = append(created, name)
		taken[name] = true
		desc.AddBitmap(&BitmapEntry{Name: "allocation", File: name, Type: TypeAllocation,
			Granularity: co.granularity, Backing: &FileRef{File: co.backingFile, Format: co.backingFmt}})
	}
	for i := range co.dirty {
		bname := "dirty." + strconv.FormatInt(i, 10)
		name, err := newFile(descPath, sanitize(bname), ".bitmap", bmSize, taken)
		if err != nil {
			return fail(err)
		}
		created = append(created, name)
		taken[name] = true
		desc.AddBitmap(&BitmapEntry{Name: bname, File: name, Type: TypeDirty,
			Granularity: co.granularity, Enabled: true})
	}
	data, err := desc.Marshal()
	if err != nil {
		return fail(err)
	}
	if err := c.Truncate(ctx, int64(len(data)), true); err != nil {
		return fail(fmt.Errorf("Could not resize image: %w", err))
	}
	if err := c.Write(ctx, 0, data, 0); err != nil {
		return fail(fmt.Errorf("Failed to save json description to file: %w", err))
	}
	if err := c.Flush(ctx); err != nil {
		return fail(err)
	}
	return nil
}

// imageInfo finds the format (qcow2 by its magic, else raw) and virtual
// size of an existing image to wrap.
func imageInfo(path string) (format string, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("Could not open '%s': %s", path, blockdev.Strerror(err))
	}
	defer f.Close()
	var h [32]byte
	n, err := io.ReadFull(f, h[:])
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return "", 0, fmt.Errorf("Could not read image for determining its format: %s", blockdev.Strerror(err))
	}
	if n >= 32 && binary.BigEndian.Uint32(h[:]) == 0x514649fb && binary.BigEndian.Uint32(h[4:]) >= 2 {
		return "qcow2", int64(binary.BigEndian.Uint64(h[24:])), nil
	}
	fi, err := f.Stat()
	if err != nil {
		return "", 0, fmt.Errorf("Could not open '%s': %s", path, blockdev.Strerror(err))
	}
	return "raw", fi.Size(), nil
}
