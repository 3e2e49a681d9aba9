// The duplicate-key check every test's relockd log goes through
// (test/lib/relockd.ts stop(): test/lib/logKeys.ts).

import t from 'tap';
import { duplicateKeys, linesWithDuplicateKeys } from './lib/logKeys.js';

t.test('keys named twice in one object, at any depth; not across objects, nor inside strings', async (t) => {
  t.same(duplicateKeys('{"level":"info","pid":1,"component":"health","component":"action-runner","pid":2,"msg":"x"}'), ['component', 'pid']);
  t.same(duplicateKeys('{"owner":{"pid":1,"name":"a"},"owner":{"pid":1,"name":"a"}}'), ['owner']);
  t.same(duplicateKeys('{"a":{"x":1,"x":2}}'), ['a.x'], 'nested: with its path');
  t.same(duplicateKeys('{"a":[{"x":1},{"x":2}],"b":{"x":3},"x":4}'), [], 'the same key in sibling objects is fine');
  t.same(duplicateKeys('{"msg":"said \\"pid\\": twice \\"pid\\":","pid":1}'), [], 'quoted text inside a string is not a key');
  t.same(duplicateKeys('{"path":"C:\\\\","path2":"x"}'), [], 'an escaped backslash ends no string early');
});

t.test('only JSON lines of the log are read, each reported with its keys', async (t) => {
  const log = ['{"a":1}', 'not json "a":1 "a":2', '{"a":1,"a":2,"msg":"m"}', ''].join('\n');
  t.same(linesWithDuplicateKeys(log), ['a twice in: {"a":1,"a":2,"msg":"m"}']);
});
