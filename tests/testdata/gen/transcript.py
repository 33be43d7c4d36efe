# Helpers the transcript generators share: each directive is appended to
# out, and emit prints what has gathered (see tests/transcript_test.go for
# the directives).
import json

out = []

def kebab(kw):
    return {k.replace('_', '-'): v for k, v in kw.items()}

def _comment(text):
    if text:
        out.append('# ' + text.replace('\n', '\n# '))

def sh(cmds, comment=None):
    _comment(comment)
    out.append('sh'); out.extend(cmds); out.append('----'); out.append('')

def qmp(cmds, comment=None, only=None, defer=False):
    _comment(comment)
    out.append('qmp' + (' only=' + only if only else '') + (' defer' if defer else ''))
    for c in cmds:
        name, args = c[0], (c[1] if len(c) > 1 else None)
        m = {'execute': name}
        if args is not None:
            m['arguments'] = args
        out.append(json.dumps(m))
    out.append('----'); out.append('')

def events(wait='0.5'):
    sh(['sleep ' + wait])
    out.append('events'); out.append('----'); out.append('')

def A(**kw):
    return ('blockdev-add', kebab(kw))

NB = ('query-named-block-nodes', {'flat': True})

def emit():
    print('\n'.join(out))
    out.clear()
