// Package all registers every block driver qbmond has. Import it for its
// side effects:
//
//	import _ "github.com/qbmond/qbmond/drivers/all"
package all

import (
	_ "github.com/qbmond/qbmond/drivers/blkdebug" // blkdebug
	_ "github.com/qbmond/qbmond/drivers/file"     // file
	_ "github.com/qbmond/qbmond/drivers/filter"   // copy-on-read, commit_top, mirror_top
	_ "github.com/qbmond/qbmond/drivers/nbd"      // nbd
	_ "github.com/qbmond/qbmond/drivers/null"     // null-co, null-aio
	_ "github.com/qbmond/qbmond/drivers/qbm"      // qbm
	_ "github.com/qbmond/qbmond/drivers/qcow2"    // qcow2
	_ "github.com/qbmond/qbmond/drivers/raw"      // raw
)
