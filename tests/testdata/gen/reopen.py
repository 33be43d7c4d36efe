# Writes the commands of tests/testdata/transcripts/reopen.txt; the expected
# output comes from QSD:
#   python3 tests/testdata/gen/reopen.py > tests/testdata/transcripts/reopen.txt
#   go test ./tests -run TestTranscripts/qsd/reopen -rewrite
from transcript import *

def R(*opts): return ('blockdev-reopen', {'options': list(opts)})
F=lambda fn, **kw: dict({'driver':'file','filename':fn}, **kebab(kw))
def N(name, drv, **kw):
    d={'node-name':name,'driver':drv}
    d.update(kebab(kw))
    return d
G=('x-debug-query-block-graph',)

out.append('''# blockdev-reopen: a list of nodes reopened as one transaction, each with
# complete options (what is left out goes back to its default), and the
# children opened inline for them reopened with them. Checks in QEMU's
# order and words; a failing element anywhere leaves every node as it was
# (the views after each failure are the same as before it).
''')
sh(['qemu-img create -q -f qcow2 base.qcow2 4M',
    "qemu-io -f qcow2 -c 'write -P 0x11 0 1M' base.qcow2 >/dev/null",
    'qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2',
    'qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2',
    'qemu-img create -q -f qcow2 other.qcow2 4M',
    'qemu-img create -q -f raw r.raw 1M'])
TOPF=F('top.qcow2')
qmp([A(driver='file', filename='base.qcow2', node_name='fb'),
     A(driver='qcow2', file='fb', node_name='b'),
     A(driver='file', filename='mid.qcow2', node_name='fm'),
     A(driver='qcow2', file='fm', backing='b', node_name='m'),
     A(driver='qcow2', file=TOPF, backing='m', node_name='t'),
     A(driver='file', filename='r.raw', node_name='fr'),
     A(driver='raw', file='fr', node_name='r'),
     A(driver='qcow2', file=F('other.qcow2'), backing=None, node_name='o'),
     A(driver='null-co', size=1048576, node_name='n')])
qmp([R(N('zz','qcow2',file='x')),
     R(N('m','qcow2',file='fm')),
     R(N('m','raw',file='fm')),
     R(N('m','qcow2',file='fm',backing='b',bogus=1)),
     R(N('m','qcow2',file='fm',backing='b',read_only='yes')),
     R(N('m','qcow2',file='fm',backing=5)),
     R(N('t','qcow2',file='nothere',backing='m')),
     R(N('t','qcow2',file=dict(TOPF, **{'node-name':'tf'}),backing='m')),
     R(N('t','qcow2',file=TOPF,backing='t')),
     R(N('b','qcow2',file='fb',backing='t')),
     R(N('o','qcow2',file=F('other.qcow2'),backing=None,force_share=True,read_only=True)),
     R(N('o','qcow2',file=F('other.qcow2'),backing=None,detect_zeroes='unmap')),
     ], comment='Bad lists: an unknown node, schema errors, a missing backing, a changed driver,\nfile or node-name (an implicit node cannot be named), cycles, options that\ncannot change.')
for who in ('qsd', 'qbmond'):
    qmp([R(N('o','qcow2',file=F('other.qcow2'),backing=None,data_file='fr'))], only=who,
        comment=None if who == 'qbmond' else 'qbmond does not advertise data-file (no external data files, see\nschema_honesty_test.go): a schema error where QSD cannot change it.')
qmp([NB, G], comment='The graph the failures above left alone.')

qmp([R(N('m','qcow2',file='fm',backing='b',read_only=True), N('t','qcow2',file=TOPF,backing='m',read_only=True)),
     NB,
     R(N('t','qcow2',file=TOPF,backing='m'), N('m','qcow2',file='fm',backing='b')),
     ('query-named-block-nodes',)],
    comment='Two nodes at once: read-only (the inline file child follows its parent),\nthen back to read-write, the listed order not mattering.')

qmp([R(N('t','qcow2',file=TOPF,backing=None), N('fb','file',filename='base.qcow2',read_only=True)),
     R(N('m','qcow2',file='fm',backing='b',read_only=True), N('o','qcow2',file='nonexist',backing=None)),
     R(N('t','qcow2',file=TOPF,backing='b',read_only=True), N('b','qcow2',file='fb',backing=None,lazy_refcounts=True), N('r','raw',file='fr',size=1000)),
     NB, G],
    comment='The last element fails (a permission conflict, an unknown node, a bad\nsize): the earlier ones, which would detach or swap a backing node and\nchange read-only, leave no trace.')

qmp([R(N('t','qcow2',file=TOPF,backing='b')),
     ('query-block',),
     R(N('t','qcow2',file=TOPF,backing=None)),
     ('query-named-block-nodes',),
     R(N('t','qcow2',file=TOPF,backing='m')),
     ('query-named-block-nodes',)],
    comment='Backing links: past mid to base, detached, back to mid. The image header\nis not rewritten (qemu-img below still names mid).')
sh(['qemu-img info -U --output=json top.qcow2 | grep -E \'"(backing-filename|full-backing-filename)"\''])

qmp([R(N('r','raw',file='fr',offset=512)),
     R(N('r','raw',file='fr',offset=512,size=4096)),
     R(N('r','raw',file='fr',offset=2000000)),
     ('query-named-block-nodes',),
     R(N('r','raw',file='fr')),
     R(N('n','null-co')),
     R(N('n','null-co',size=1048576,read_zeroes=True)),
     R(N('n','null-co',size=2048)),
     R(N('n','null-co',size=1048576,detect_zeroes='on')),
     R(N('fb','file',filename='base.qcow2',drop_cache=False)),
     R(N('fb','file',filename='base.qcow2')),
     R(N('fb','file',filename='base.qcow2',drop_cache=False,locking='off')),
     R(N('fb','file',filename='base.qcow2',drop_cache=False,aio='native')),
     R(N('fb','file',filename='mid.qcow2',drop_cache=False)),
     R(N('fb','file',filename='base.qcow2',drop_cache=False,x_check_cache_dropped=True)),
     R(N('fb','file',filename='base.qcow2',drop_cache=False)),
     R(N('fb','file',filename='base.qcow2',read_only=True,drop_cache=False)),
     R(N('o','qcow2',file=F('other.qcow2'),backing=None,lazy_refcounts=True,cache_size=1048576,pass_discard_other=True)),
     R(N('o','qcow2',file=F('other.qcow2'),backing=None,l2_cache_size=1048576,refcount_cache_size=65536,cache_clean_interval=10,overlap_check='none',pass_discard_request=False)),
     R(N('o','qcow2',file=F('other.qcow2'),backing=None,cache_size=4096,l2_cache_size=1048576)),
     R(N('o','qcow2',file=F('other.qcow2'),backing=None,l2_cache_entry_size=100)),
     R(N('o','qcow2',file=F('other.qcow2'),backing=None)),
     ('query-named-block-nodes',)],
    comment='Driver options: raw\'s window changes and resets; null-co\'s cannot change;\nfile nodes take drop-cache (which cannot be reset) and x-check-cache-dropped;\nqcow2 takes its cache and refcount options, checked as at open.')

qmp([R(N('o','qcow2',file=F('other.qcow2'),backing=None,cache={'direct':True})),
     ('query-named-block-nodes',),
     R(N('o','qcow2',file=F('other.qcow2'),backing=None,read_only=True,detect_zeroes='on',discard='unmap')),
     ('query-named-block-nodes',),
     R(N('o','qcow2',file=F('other.qcow2',read_only=True),backing=None)),
     R(N('o','qcow2',file=F('other.qcow2',read_only=False),backing=None,read_only=True,auto_read_only=True)),
     ('query-named-block-nodes',),
     R(N('o','qcow2',file=F('other.qcow2'),backing=None)),
     ('query-named-block-nodes',)],
    comment='Generic options: cache.direct (inherited by the inline file), read-only,\ndetect-zeroes, discard, auto-read-only; an inline child can be writable under\na read-only parent, not the other way round.')
emit()
out.append('''# A fresh daemon: file links, lists naming a node twice, children kept by
# reference, nodes that cannot reopen.''')
out.append('start'); out.append('----'); out.append('ok'); out.append('')
sh(['qemu-img create -q -f qcow2 a.qcow2 4M', 'qemu-img create -q -f qcow2 c.qcow2 4M'])
AF=F('a.qcow2')
qmp([A(driver='qcow2', file=AF, node_name='q'),
     A(driver='file', filename='c.qcow2', node_name='fc'),
     A(driver='blkdebug', image='fc', node_name='dbg'),
     A(driver='qcow2', file='dbg', node_name='c'),
     A(driver='copy-on-read', file='c', node_name='cor'),
     R(N('q','qcow2',file=AF,backing=None,read_only=True), N('q','qcow2',file=AF,backing=None,detect_zeroes='on')),
     NB,
     R(N('q','qcow2',file=AF,backing=None,cache={'direct':True})),
     NB],
    comment='Named twice, a node takes the union of both option sets, the later winning.')
qmp([R(N('q','qcow2',file=AF,backing=None,discard='unmap')),
     NB],
    comment='Inline again: the file child goes back to its defaults (cache.direct off).')
qmp([R(N('dbg','blkdebug',image='fc')),
     R(N('dbg','blkdebug',image='fc',align=4096)),
     R(N('dbg','blkdebug',image='fc',inject_error=[{'event':'read_aio'}])),
     R(N('cor','copy-on-read',file='c')),
     R(N('c','qcow2',file='dbg',backing=None,read_only=True)),
     R(N('c','qcow2',file='dbg',backing='fc')),
     ('query-named-block-nodes',),
     R(N('c','qcow2',file='dbg',backing=None)),
     R(N('c','qcow2',file='dbg')),
     R(N('c','qcow2',file='fc')),
     R(N('c','qcow2',file='q')),
     R(N('c','qcow2',file='dbg'))],
    comment='blkdebug reopens with its rules unchanged; copy-on-read does not reopen;\na protocol node can be a backing node; file can move to another node when\nthe permissions allow it.')
qmp([A(driver='qcow2', file=AF, node_name='q2', read_only=True),
     A(driver='qcow2', file=AF, node_name='q2', read_only=True, force_share=True),
     A(driver='qcow2', file=F('a.qcow2', force_share=False, read_only=True), node_name='q3', read_only=True, force_share=True),
     A(driver='qcow2', file=F('a.qcow2', force_share=True, read_only=True), node_name='q4', read_only=True),
     G,
     R(N('q2','qcow2',file=AF,backing=None,read_only=True)),
     R(N('q2','qcow2',file=AF,backing=None,read_only=True,force_share=True))],
    comment='force-share: inherited by the inline file child, whose parents then share\neverything on it, so that the image opens while q writes it.')
qmp([('nbd-server-start', {'addr': {'type':'unix','data':{'path':'nbd.sock'}}}),
     ('block-export-add', {'type':'nbd','id':'e','node-name':'q','writable':True}),
     R(N('q','qcow2',file=AF,backing=None,read_only=True)),
     ('block-export-del', {'id':'e'}),
     ('block-export-add', {'type':'nbd','id':'e','node-name':'q','writable':False}),
     R(N('q','qcow2',file=AF,backing=None,read_only=True)),
     ('query-named-block-nodes',),
     R(N('q','qcow2',file=AF,backing=None)),
     ('block-export-del', {'id':'e'}),
     ('nbd-server-stop',)],
    comment='A writable export keeps its node writable; a read-only one does not.')
sh(['qemu-img create -q -f qcow2 jb.qcow2 16M', "qemu-io -f qcow2 -c 'write -P 1 0 8M' jb.qcow2 >/dev/null",
    'qemu-img create -q -f qcow2 -b jb.qcow2 -F qcow2 jt.qcow2'])
JT=F('jt.qcow2'); JB=F('jb.qcow2')
T=lambda **kw: N('jt','qcow2',file=JT,**kw)
qmp([A(driver='qcow2', file=JB, node_name='jb'),
     A(driver='qcow2', file=JT, backing='jb', node_name='jt'),
     ('block-stream', {'job-id':'s','device':'jt','speed':1})],
    comment='A running stream job: the backing link it uses is frozen; reopens drain\nthe job, which copies one more chunk each time it is resumed (its speed\nlimit sleep ends early, as in QEMU 7.2). The job copies its first chunk\nas soon as it starts; the pause lets it do so before the first drain.')
sh(['sleep 0.2'])
qmp([R(T(backing=None)),
     R(T(backing='jb',read_only=True)),
     R(T(backing='jb')),
     R(N('jb','qcow2',file=JB,backing=None,read_only=True))])
sh(['sleep 0.5'])
qmp([('query-block-jobs',), ('block-job-cancel', {'device':'s','force':True})])
qmp([('block-commit', {'job-id':'c','device':'jt','speed':1})],
    comment='An active commit: its base must stay writable.')
sh(['sleep 0.2'])
qmp([R(T(backing=None)),
     R(N('jb','qcow2',file=JB,read_only=True,backing=None)),
     R(N('jb','qcow2',file=JB,backing=None))])
sh(['sleep 0.5'])
qmp([('query-block-jobs',), ('block-job-cancel', {'device':'c','force':True})])
emit()
