# Writes the commands of tests/testdata/transcripts/backup.txt; the expected
# output comes from QSD:
#   python3 tests/testdata/gen/backup.py > tests/testdata/transcripts/backup.txt
#   go test ./tests -run TestTranscripts/qsd/backup -rewrite
from transcript import *

def K(**kw): return kebab(kw)
def B(**kw): return ('blockdev-backup', K(**kw))
def DB(**kw): return ('drive-backup', K(**kw))
def T(actions, **props):
    a={'actions':actions}
    if props: a['properties']=kebab(props)
    return ('transaction', a)
def act(typ, **kw): return {'type':typ,'data':K(**kw)}
F=lambda fn: {'driver':'file','filename':fn}
JOBS=('query-block-jobs',)
def BM(node): return ('x-debug-block-dirty-bitmap-sha256', {'node':node,'name':'b0'})

out.append('''# Backups: blockdev-backup and drive-backup checked in QEMU's order and
# words; the sync modes, bitmap modes, error policies, manual finalize and
# dismiss, the copy-before-write filter in the graph; the bitmap actions
# of transaction and their rollback. Jobs run throttled (speed 1: one
# chunk, then a long sleep) where the state in the middle matters.
''')
sh(['qemu-img create -q -f qcow2 src.qcow2 4M',
    "qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x12 3M 64k' src.qcow2 >/dev/null",
    'qemu-img create -q -f qcow2 -b src.qcow2 -F qcow2 top.qcow2',
    "qemu-io -f qcow2 -c 'write -P 0x21 2M 128k' -c 'write -P 0x22 3584k 64k' top.qcow2 >/dev/null",
    'for t in t1 t2 t3 t4; do qemu-img create -q -f qcow2 $t.qcow2 4M; done',
    'qemu-img create -q -f qcow2 small.qcow2 2M',
    'qemu-img create -q -f raw raw.img 4M'])
qmp([A(driver='qcow2', file=F('src.qcow2'), node_name='src', read_only=True),
     A(driver='qcow2', file=F('top.qcow2'), backing='src', node_name='top'),
     A(driver='qcow2', file=F('t1.qcow2'), node_name='t1'),
     A(driver='qcow2', file=F('t2.qcow2'), node_name='t2'),
     A(driver='qcow2', file=F('small.qcow2'), node_name='small'),
     A(driver='qcow2', file=F('t3.qcow2'), node_name='t3ro', read_only=True),
     A(driver='raw', file=F('raw.img'), node_name='raw'),
     ('block-dirty-bitmap-add', {'node':'top','name':'b0'}),
     ('block-dirty-bitmap-add', {'node':'top','name':'off','disabled':True})])

qmp([B(device='nope', target='t1', sync='full'),
     B(job_id='j', device='top', target='nope', sync='full'),
     B(job_id='j', device='top', target='top', sync='full'),
     B(job_id='j', device='top', target='small', sync='full'),
     B(job_id='j', device='top', target='t3ro', sync='full'),
     B(job_id='j', device='top', target='raw', sync='full', compress=True),
     B(job_id='j', device='top', target='t1', sync='incremental'),
     B(job_id='j', device='top', target='t1', sync='bitmap'),
     B(job_id='j', device='top', target='t1', sync='incremental', bitmap='nope'),
     B(job_id='j', device='top', target='t1', sync='incremental', bitmap='b0', bitmap_mode='never'),
     B(job_id='j', device='top', target='t1', sync='full', bitmap='b0'),
     B(job_id='j', device='top', target='t1', sync='full', bitmap_mode='always'),
     B(job_id='j', device='top', target='t1', sync='none', bitmap='b0', bitmap_mode='always'),
     B(job_id='j', device='top', target='t1', sync='full', speed=-1),
     B(job_id='j', device='top', target='t1', sync='full', filter_node_name='src'),
     B(job_id='j', device='top', target='t1', sync='full', on_source_error='ignore', speed=-5),
     B(job_id='j', device='top', target='t1', sync='full', on_target_error='nonsense'),
     B(job_id='j', device='top', target='t1', sync='nonsense'),
     B(job_id='1j', device='top', target='t1', sync='full'),
     B(device='top', target='t1'),
     JOBS],
    comment='Bad arguments: nothing starts.')

qmp([B(job_id='j', device='top', target='t1', sync='full', speed=1, filter_node_name='cbw')],
    comment='A running backup: its filter sits above the source under its name; the\ntarget and the job id are taken.')
sh(['sleep 0.5'])
qmp([JOBS,
     B(job_id='j', device='top', target='t2', sync='full'),
     B(job_id='j2', device='top', target='t1', sync='full'),
     B(job_id='j2', device='t1', target='t2', sync='full'),
     ('blockdev-del', {'node-name':'t1'}),
     ('blockdev-del', {'node-name':'cbw'}),
     NB,
     ('x-debug-query-block-graph',),
     ('block-job-cancel', {'device':'j'})])
sh(['sleep 0.3'])
qmp([JOBS, NB])

qmp([B(job_id='top', device='top', target='t1', sync='top', auto_finalize=False, auto_dismiss=False, speed=1)],
    comment='sync=top copies only what the top layer holds; manual finalize and\ndismiss.')
sh(['sleep 0.5'])
qmp([JOBS, ('block-job-set-speed', {'device':'top','speed':0})], defer=True)
events()
qmp([JOBS, ('query-jobs',), ('job-dismiss', {'id':'top'}), ('job-finalize', {'id':'top'}),
     ('query-jobs',), ('job-dismiss', {'id':'top'}), ('query-jobs',)])
sh(["qemu-img map --output=json -f qcow2 t1.qcow2 | sed 's/\"offset\": [0-9]*, //'"])

qmp([('block-dirty-bitmap-clear', {'node':'top','name':'b0'})])
sh(['qemu-img create -q -f qcow2 t1.qcow2 4M'],
   comment='Bitmap modes: a bitmap with sync=bitmap never clears, always clears even\non failure, on-success clears on success; a busy bitmap cannot be used\nor changed meanwhile.')
qmp([('block-dirty-bitmap-add', {'node':'top','name':'b1'}),
     ('block-dirty-bitmap-merge', {'node':'top','target':'b1','bitmaps':['b0']}),
     ('nbd-server-start', {'addr': {'type':'unix','data':{'path':'nbd.sock'}}}),
     ('block-export-add', {'type':'nbd','id':'e','node-name':'top','writable':True,'name':'top'})])
sh(["qemu-io -f raw -c 'write -P 0x31 0 64k' -c 'write -P 0x32 1M 64k' 'nbd+unix:///top?socket=nbd.sock' >/dev/null"])
qmp([B(job_id='bm', device='top', target='t2', sync='bitmap', bitmap='b0', bitmap_mode='never', speed=1)])
sh(['sleep 0.5'])
qmp([JOBS,
     B(job_id='bm2', device='top', target='t3ro', sync='incremental', bitmap='b0'),
     ('block-dirty-bitmap-clear', {'node':'top','name':'b0'}),
     ('block-dirty-bitmap-remove', {'node':'top','name':'b0'}),
     ('block-dirty-bitmap-disable', {'node':'top','name':'b0'}),
     ('block-dirty-bitmap-merge', {'node':'top','target':'b1','bitmaps':['b0']}),
     ('block-job-set-speed', {'device':'bm','speed':0})], defer=True)
events()
qmp([NB, BM('top')])
qmp([B(job_id='bm', device='top', target='t2', sync='bitmap', bitmap='b0', bitmap_mode='always')], defer=True)
events()
qmp([NB, BM('top')])

sh(['rm -f d1.qcow2 d2.raw', 'qemu-img create -q -f qcow2 d3.qcow2 4M'],
   comment='drive-backup: the target image is created (or opened with mode=existing),\nits format given or taken from the source.')
qmp([DB(job_id='d0', device='top', target='d0.qcow2', sync='full', mode='existing'),
     DB(job_id='d0', device='top', target='d0.qcow2', sync='full', format='nosuch'),
     DB(job_id='d0', device='nope', target='d0.qcow2', sync='full')])
qmp([DB(job_id='d1', device='top', target='d1.qcow2', sync='full')], defer=True)
events('1')
qmp([DB(job_id='d2', device='top', target='d2.raw', sync='top', format='raw')], defer=True)
events('1')
qmp([DB(job_id='d3', device='top', target='d3.qcow2', sync='full', mode='existing', format='qcow2')], defer=True)
events('1')
qmp([JOBS, NB])
sh(["for f in d1.qcow2 d2.raw d3.qcow2; do qemu-img info -U --output=json $f | grep -E '\"(format|virtual-size|backing-filename)\"'; done",
    'qemu-img compare -U -f raw -F qcow2 "nbd+unix:///top?socket=nbd.sock" d1.qcow2',
    'qemu-img compare -U -f raw -F qcow2 "nbd+unix:///top?socket=nbd.sock" d3.qcow2'])

qmp([T([act('block-dirty-bitmap-add', node='top', name='x1'),
        act('block-dirty-bitmap-clear', node='top', name='b1'),
        act('block-dirty-bitmap-disable', node='top', name='b2'),
        act('block-dirty-bitmap-enable', node='top', name='off'),
        act('block-dirty-bitmap-merge', node='top', target='off', bitmaps=['b1', {'node':'top','name':'b2'}]),
        act('block-dirty-bitmap-remove', node='top', name='b0'),
        {'type':'abort','data':{}}]),
     NB,
     T([act('block-dirty-bitmap-add', node='top', name='x1'),
        act('block-dirty-bitmap-remove', node='top', name='x1'),
        act('block-dirty-bitmap-remove', node='top', name='x1')]),
     T([act('block-dirty-bitmap-remove', node='top', name='b0'),
        act('block-dirty-bitmap-clear', node='top', name='b0')]),
     T([act('block-dirty-bitmap-add', node='top', name='x1')], completion_mode='grouped'),
     T([act('blockdev-backup', job_id='g', device='top', target='t1', sync='full')], completion_mode='nonsense'),
     T([{'type':'nonsense','data':{}}]),
     T([]),
     NB,
     T([act('block-dirty-bitmap-clear', node='top', name='b1'),
        act('block-dirty-bitmap-disable', node='top', name='b2'),
        act('block-dirty-bitmap-enable', node='top', name='off'),
        act('block-dirty-bitmap-merge', node='top', target='off', bitmaps=['b2']),
        act('block-dirty-bitmap-remove', node='top', name='b0')]),
     NB],
    comment='Bitmap actions in a transaction: all prepare, then all commit; an abort\nor a failing action undoes the ones before it.')
emit()
