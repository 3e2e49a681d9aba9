// The configuration file: libvirt's virConf syntax, virtlockd's keys plus
// relockd's, schema validation with located messages, warnings, defaults,
// libvirt's log settings. Where the real virtlockd can run, the same files
// are fed to it: relockd must accept what virtlockd accepts (syntax), and a
// virtlockd.conf carrying relockd's keys must still start virtlockd.
// Needs `npm run build` (dist/validators/config.cjs).

import t from 'tap';
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, truncateSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CONFIG_KEYS,
  ConfigError,
  DEFAULT_CONFIG,
  MAX_CONFIG_FILE_SIZE,
  VIRTLOCKD_KEYS,
  loadConfig,
  loggingPlan,
  parseConfig,
  parseLogFilters,
  parseLogOutputs,
  parseVirConf,
  validateWith,
} from '../src/config/index.js';
import type { RelockdConfig } from '../src/config/index.js';
import { startVirtlockd, virtlockdAvailable, virtlockdUnavailableReason } from './lib/virtlockd.js';

const F = '/etc/test/virtlockd.conf';

/** Debian 12's /etc/libvirt/virtlockd.conf (libvirt-daemon-system 9.0.0-4+deb12u2), byte for byte. */
const DEBIAN_VIRTLOCKD_CONF = `# Master virtlockd daemon configuration file
#

#################################################################
#
# Logging controls
#

# Logging level: 4 errors, 3 warnings, 2 information, 1 debug
# basically 1 will log everything possible
#
# WARNING: USE OF THIS IS STRONGLY DISCOURAGED.
#
# WARNING: It outputs too much information to practically read.
# WARNING: The "log_filters" setting is recommended instead.
#
# WARNING: Journald applies rate limiting of messages and so libvirt
# WARNING: will limit "log_level" to only allow values 3 or 4 if
# WARNING: journald is the current output.
#
# WARNING: USE OF THIS IS STRONGLY DISCOURAGED.
#log_level = 3

# Logging filters:
# A filter allows to select a different logging level for a given category
# of logs. The format for a filter is:
#
#    level:match
#
# where 'match' is a string which is matched against the category
# given in the VIR_LOG_INIT() at the top of each libvirt source
# file, e.g., "remote", "qemu", or "util.json". The 'match' in the
# filter matches using shell wildcard syntax (see 'man glob(7)').
# The 'match' is always treated as a substring match. IOW a match
# string 'foo' is equivalent to '*foo*'.
#
# 'level' is the minimal level where matching messages should
#  be logged:
#
#    1: DEBUG
#    2: INFO
#    3: WARNING
#    4: ERROR
#
# Multiple filters can be defined in a single @log_filters, they just need
# to be separated by spaces. Note that libvirt performs "first" match, i.e.
# if there are concurrent filters, the first one that matches will be applied,
# given the order in @log_filters.
#
# For the virtlockd daemon, a typical need is to capture information
# from the locking code and some of the utility code. Some utility
# code is very verbose and is generally not desired. A suitable filter
# string for debugging might be to turn off object, json & event logging,
# but enable the rest of the util and the locking code:
#
#log_filters="1:locking 4:object 4:json 4:event 1:util"

# Logging outputs:
# An output is one of the places to save logging information
# The format for an output can be:
#    level:stderr
#      output goes to stderr
#    level:syslog:name
#      use syslog for the output and use the given name as the ident
#    level:file:file_path
#      output to a file, with the given filepath
#    level:journald
#      output to journald logging system
# In all cases 'level' is the minimal priority, acting as a filter
#    1: DEBUG
#    2: INFO
#    3: WARNING
#    4: ERROR
#
# Multiple outputs can be defined, they just need to be separated by spaces.
# e.g. to log all warnings and errors to syslog under the virtlockd ident:
#log_outputs="3:syslog:virtlockd"
#

# The maximum number of concurrent client connections to allow
# on primary socket
# Each running virtual machine will require one open connection
# to virtlockd. So 'max_clients' will affect how many VMs can
# be run on a host
#max_clients = 1024

# The maximum number of concurrent client connections to allow
# on administrative socket
#admin_max_clients = 5
`;

/** Every example of the shipped file switched on (the comment character removed). */
const uncommented = (text: string) => text.replace(/^#(log_level|log_filters|log_outputs|max_clients|admin_max_clients)\b/gm, '$1');

const errorOf = (fn: () => unknown): ConfigError => {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('no ConfigError thrown');
};

const configOf = (text: string): RelockdConfig => parseConfig(text, F).config;

t.test("Debian's shipped virtlockd.conf is accepted unchanged", async (t) => {
  const installed = '/etc/libvirt/virtlockd.conf';
  const texts: Array<[string, string]> = [['embedded copy of the shipped file', DEBIAN_VIRTLOCKD_CONF]];
  if (existsSync(installed)) texts.push([installed, readFileSync(installed, 'utf8')]);
  for (const [name, text] of texts) {
    const doc = parseVirConf(text, name);
    t.same(doc.entries, [], `${name}: nothing but comments`);
    const r = parseConfig(text, name);
    t.same(r.config, DEFAULT_CONFIG, `${name}: defaults`);
    t.same(r.warnings, [], `${name}: no warning`);
  }
  if (existsSync(installed)) {
    const r = loadConfig(installed, { required: true });
    t.equal(r.found, true);
    t.same(r.config, DEFAULT_CONFIG);
  }

  const on = uncommented(DEBIAN_VIRTLOCKD_CONF);
  const r = parseConfig(on, F);
  t.same(r.warnings, [], 'the shipped examples switched on: no warning');
  t.equal(r.config.logLevel, 3);
  t.same(
    r.config.logFilters.map((f) => [f.priority, f.match]),
    [
      [1, 'locking'],
      [4, 'object'],
      [4, 'json'],
      [4, 'event'],
      [1, 'util'],
    ],
  );
  t.same(r.config.logOutputs, [{ priority: 3, level: 'warn', kind: 'syslog', ident: 'virtlockd', text: '3:syslog:virtlockd' }]);
  t.equal(r.config.maxClients, 1024);
  t.equal(r.config.adminMaxClients, 5, 'the shipped comment says 5');
  t.same(r.sources.maxClients, { key: 'max_clients', line: on.split('\n').findIndex((l) => l.startsWith('max_clients')) + 1, column: 1 });
});

t.test('defaults', async (t) => {
  t.same(DEFAULT_CONFIG, {
    logLevel: 0,
    logFilters: [],
    logOutputs: [],
    maxClients: 1024,
    adminMaxClients: 5000,
    shutdownPolicy: 'drain',
    ownerTermGrace: 3,
    lockspaces: [],
    stateFile: null,
    pidFile: null,
    storageTimeout: 30,
    storageConcurrency: 4,
    reexecQuiesceTimeout: 5,
    metricsListen: null,
    lockspaceCheckInterval: 10,
    lockspaceFailureTimeout: 60,
    lockFailureAction: 'pause',
    killpath: null,
    killGrace: 15,
    nfsLeaseTime: 90,
    libvirtUri: 'qemu:///system',
  });
  t.ok(Object.isFrozen(DEFAULT_CONFIG));
  const a = configOf('');
  a.lockspaces.push('/x');
  t.same(configOf('').lockspaces, [], 'every load gets its own arrays');
  t.same(configOf(''), DEFAULT_CONFIG, 'empty file');
  t.same(configOf('\n\n  \n'), DEFAULT_CONFIG, 'blank lines only (virconf.c refuses this; we accept more, never less)');
});

t.test('every key: value, camelCase field, source line', async (t) => {
  const text = [
    'log_level = 2',
    'log_filters = "1:locking 4:object"',
    'log_outputs = "3:journald 1:file:/var/log/relockd.log"',
    'max_clients = 2048',
    'admin_max_clients = 10',
    'shutdown_policy = "kill-owners"',
    'owner_term_grace = 7',
    'lockspaces = [',
    '  "/var/lib/libvirt/lockd/files",',
    '  "/var/lib/libvirt/lockd/lvmvolumes",',
    ']',
    'state_file = "/run/relockd/state.json"',
    'pid_file = "/run/relockd.pid"',
    'storage_timeout = 60',
    'storage_concurrency = 16',
    'reexec_quiesce_timeout = 10',
    'metrics_listen = "127.0.0.1:9855"',
    'lockspace_check_interval = 5',
    'lockspace_failure_timeout = 30',
    'lock_failure_action = "killpath"',
    'killpath = "/usr/local/bin/vm-fence --hard"',
    'kill_grace = 20',
    'nfs_lease_time = 120',
    'libvirt_uri = "qemu+ssh://h/system"',
  ].join('\n');
  const r = parseConfig(text, F);
  t.same(r.warnings, []);
  const c = r.config;
  t.equal(c.logLevel, 2);
  t.same(c.logFilters.map((f) => f.text), ['1:locking', '4:object']);
  t.same(c.logOutputs, [
    { priority: 3, level: 'warn', kind: 'journald', text: '3:journald' },
    { priority: 1, level: 'debug', kind: 'file', path: '/var/log/relockd.log', text: '1:file:/var/log/relockd.log' },
  ]);
  t.equal(c.maxClients, 2048);
  t.equal(c.adminMaxClients, 10);
  t.equal(c.shutdownPolicy, 'kill-owners');
  t.equal(c.ownerTermGrace, 7);
  t.same(c.lockspaces, ['/var/lib/libvirt/lockd/files', '/var/lib/libvirt/lockd/lvmvolumes']);
  t.equal(c.stateFile, '/run/relockd/state.json');
  t.equal(c.pidFile, '/run/relockd.pid');
  t.equal(c.storageTimeout, 60);
  t.equal(c.storageConcurrency, 16);
  t.equal(c.reexecQuiesceTimeout, 10);
  t.equal(c.metricsListen, '127.0.0.1:9855');
  t.equal(c.lockspaceCheckInterval, 5);
  t.equal(c.lockspaceFailureTimeout, 30);
  t.equal(c.lockFailureAction, 'killpath');
  t.equal(c.killpath, '/usr/local/bin/vm-fence --hard');
  t.equal(c.killGrace, 20);
  t.equal(c.nfsLeaseTime, 120);
  t.equal(c.libvirtUri, 'qemu+ssh://h/system');
  t.same(Object.keys(r.sources).sort(), Object.values(CONFIG_KEYS).sort(), 'a source for every field set');
  t.same(r.sources.lockspaces, { key: 'lockspaces', line: 8, column: 1 });
  t.same(r.sources.reexecQuiesceTimeout, { key: 'reexec_quiesce_timeout', line: 16, column: 1 });

  t.same(configOf('lockspaces = "/srv/locks"').lockspaces, ['/srv/locks'], 'a single string is a one-item list (libvirt string lists)');
  t.same(configOf('lockspaces = []').lockspaces, []);
  for (const p of ['drain', 'kill-owners', 'refuse']) t.equal(configOf(`shutdown_policy = "${p}"`).shutdownPolicy, p);
  t.equal(configOf('log_level = 0').logLevel, 0, '0 = default');
  t.equal(configOf('max_clients = 0').maxClients, 0, '0 accepted as by virtlockd (with a warning)');
});

t.test('the key table and the schema agree', async (t) => {
  const schema = JSON.parse(readFileSync(new URL('../schemas/config.schema.json', import.meta.url), 'utf8')) as {
    $schema: string;
    properties: Record<string, { title?: string }>;
  };
  t.equal(schema.$schema, 'https://json-schema.org/draft/2020-12/schema');
  t.same(Object.keys(schema.properties).sort(), Object.keys(CONFIG_KEYS).sort());
  for (const [k, p] of Object.entries(schema.properties)) t.ok(p.title, `${k} has a title (the "expected" text)`);
  for (const k of VIRTLOCKD_KEYS) t.ok(k in CONFIG_KEYS);
  t.equal(validateWith('config', { max_clients: 5, whatever: 'x' }).valid, true, 'unknown keys are not schema errors');
  const bad = validateWith('config', { max_clients: 'x' });
  t.equal(bad.valid, false);
  t.same(bad.problems, ['/max_clients: must be integer'], "describeErrors' wording");
});

t.test('virConf syntax', async (t) => {
  const doc = parseVirConf(
    [
      '# comment line',
      '   # indented comment',
      '',
      'a = 1',
      'b=2;c = 3 ; d = "x" # trailing comment',
      "\te\t=\t'single quoted \"inside\"'",
      'f = """multi',
      'line "quoted" \'x\'"""',
      'g = [ "a", "b" ]',
      'h = [',
      '  "x" ,',
      '  -2,',
      '   ]',
      'i = []',
      'j = [ [ 1, 2 ], "n" ]',
      'k = -42',
      'l = +7',
      'm2_x_Y = 0',
      'n = ""',
      'o = "a#b"',
      'p = "\\n\\t"',
      'q = [ "a" ]   # after a list',
    ].join('\n'),
    F,
  );
  const v = Object.fromEntries(doc.entries.map((e) => [e.key, e.value]));
  t.same(v, {
    a: 1,
    b: 2,
    c: 3,
    d: 'x',
    e: 'single quoted "inside"',
    f: 'multi\nline "quoted" \'x\'',
    g: ['a', 'b'],
    h: ['x', -2],
    i: [],
    j: [[1, 2], 'n'],
    k: -42,
    l: 7,
    m2_x_Y: 0,
    n: '',
    o: 'a#b',
    p: '\\n\\t',
    q: ['a'],
  });
  const at = (k: string) => doc.byKey.get(k)!;
  t.same([at('a').line, at('a').column], [4, 1]);
  t.same([at('c').line, at('c').column, at('c').valueAt.column], [5, 5, 9]);
  t.same([at('d').line, at('d').column], [5, 13]);
  t.equal(at('d').comment, ' trailing comment');
  t.same([at('e').line, at('e').column], [6, 2]);
  t.same([at('g').line, at('h').line, at('i').line], [9, 10, 14], 'line numbers count the newlines inside """ strings');
  t.same(at('h').items, [
    { line: 11, column: 3 },
    { line: 12, column: 3 },
  ]);
  t.equal(at('k').type, 'signed');
  t.equal(at('l').type, 'unsigned', "'+' is unsigned, as in virconf.c");
  t.equal(at('g').type, 'list');
  t.equal(at('d').type, 'string');

  const crlf = parseVirConf('a = 1\r\nb = "x"\r\n\r\nc = [ 1,\r\n 2 ]\r\n', F);
  t.same(
    crlf.entries.map((e) => [e.key, e.value, e.line]),
    [
      ['a', 1, 1],
      ['b', 'x', 2],
      ['c', [1, 2], 4],
    ],
    'CRLF line ends',
  );
  const dup = parseVirConf('a = 1\nb = 2\na = 3\n', F);
  t.equal(dup.byKey.get('a')!.value, 1, 'the first occurrence wins, as in libvirt');
  t.same(
    dup.duplicates.map((e) => [e.key, e.line]),
    [['a', 3]],
  );
  t.same(parseVirConf('a = 1', F).entries.length, 1, 'no newline at the end');
  t.same(parseVirConf('a = 1 ;', F).entries.length, 1, "a trailing ';'");
});

t.test('syntax errors name file:line:column and what was expected', async (t) => {
  const cases: Array<[string, number, number, RegExp]> = [
    ['max_clients = "abc', 1, 15, /unterminated string for 'max_clients': expected a closing " before the end of the file/],
    ['a = 1\nlog_filters = "1:locking\n4:object"', 2, 15, /unterminated string for 'log_filters'.*end of the line.*do not span lines/],
    ["a = 'abc", 1, 5, /unterminated string for 'a': expected a closing '/],
    ['a = """abc\n\n', 1, 5, /unterminated string for 'a': no closing """/],
    ['a = [ "x",\n "y"\n\n', 1, 5, /the list for 'a' opened here is not closed with '\]'/],
    ['a = [ "x", "y"\n\nb = 1', 3, 1, /expected ',' or '\]' in the list for 'a' \(opened at 1:5\), found 'b'$/],
    ['a = [ "x" "y" ]', 1, 11, /expected ',' or '\]' in the list for 'a' \(opened at 1:5\), found '"'/],
    ['a = [ "x", # note\n "y" ]', 1, 12, /expected a value for 'a'.*found '#'.*comments are not allowed/],
    ['a = [ , ]', 1, 7, /expected a value for 'a'.*found ','/],
    ['max_clients = 1.5', 1, 16, /after the value of 'max_clients', found '\.' \(numbers are decimal integers only/],
    ['max_clients = 0x10', 1, 16, /found 'x'/],
    ['max_clients = 10s', 1, 17, /found 's'/],
    ['max_clients = 1 admin_max_clients = 2', 1, 17, /found 'a' \(one setting per line, or separate them with ';'\)/],
    ['log_level = yes', 1, 13, /expected a value for 'log_level' \(a number, a "string" or a \[ list \]\), found 'y' \(strings need double quotes\)/],
    ['log_level =', 1, 12, /expected a value for 'log_level'.*found end of file/],
    ['log_level =\n3', 1, 12, /expected a value for 'log_level'.*found end of line/],
    ['a = -', 1, 6, /unterminated number for 'a': expected a digit after the sign, found end of file/],
    ['a = +x', 1, 6, /unterminated number/],
    ['\n\n_a = 1', 3, 1, /expected a setting name \(a letter, then letters, digits or '_'\), found '_'/],
    ['1a = 1', 1, 1, /expected a setting name/],
    ['a.b = 1', 1, 2, /expected '=' after the setting name 'a', found '\.'/],
    ['log-level = 1', 1, 4, /expected '=' after the setting name 'log', found '-'/],
    ['max_clients 5', 1, 13, /expected '=' after the setting name 'max_clients', found '5'/],
    ['a = "x\\"y"', 1, 9, /after the value of 'a', found 'y'/],
    ['a = 1 = 2', 1, 7, /found '='/],
    ['a = 1\tb', 1, 7, /found 'b'/],
    ['a = \u0001', 1, 5, /found character U\+0001/],
  ];
  for (const [text, line, column, re] of cases) {
    const e = errorOf(() => parseConfig(text, F));
    t.equal(e.file, F, JSON.stringify(text));
    t.equal(e.line, line, `${JSON.stringify(text)}: line`);
    t.equal(e.problems[0]!.column, column, `${JSON.stringify(text)}: column`);
    t.match(e.message, re, JSON.stringify(text));
    t.ok(e.message.startsWith(`${F}:${line}:${column}: syntax error: `), e.message);
  }
});

t.test('invalid values name file, line, key and what was expected', async (t) => {
  const cases: Array<[string, number, string, RegExp]> = [
    ['max_clients = "1024"', 1, 'max_clients', /invalid value for 'max_clients': "1024" \(must be integer\); expected an integer from 0 to 4294967295/],
    ['max_clients = -1', 1, 'max_clients', /-1 \(must be >= 0\); expected an integer from 0/],
    ['max_clients = 4294967296', 1, 'max_clients', /must be <= 4294967295/],
    ['admin_max_clients = [ 1 ]', 1, 'admin_max_clients', /\[ 1 \] \(must be integer\)/],
    ['\nlog_level = 5', 2, 'log_level', /5 \(must be <= 4\); expected an integer from 0 to 4 \(0 default, 1 debug, 2 info, 3 warning, 4 error\)/],
    ['log_level = "debug"', 1, 'log_level', /must be integer/],
    ['log_filters = 1', 1, 'log_filters', /1 \(must be string\); expected a string of space-separated LEVEL:MATCH filters/],
    ['log_outputs = [ "3:stderr" ]', 1, 'log_outputs', /must be string/],
    ['shutdown_policy = "kill"', 1, 'shutdown_policy', /"kill" \(must be equal to one of the allowed values.*\); expected one of "drain", "kill-owners", "refuse"/],
    ['shutdown_policy = 1', 1, 'shutdown_policy', /must be string/],
    ['owner_term_grace = -1', 1, 'owner_term_grace', /-1 \(must be >= 0\); expected a number of seconds from 0 to 2147483/],
    ['owner_term_grace = "3"', 1, 'owner_term_grace', /must be number/],
    ['storage_timeout = 2147484', 1, 'storage_timeout', /must be <= 2147483/],
    ['storage_concurrency = 0', 1, 'storage_concurrency', /must be >= 1\); expected an integer from 1 to 64/],
    ['storage_concurrency = 65', 1, 'storage_concurrency', /must be <= 64/],
    ['reexec_quiesce_timeout = -5', 1, 'reexec_quiesce_timeout', /must be > 0/],
    ['state_file = "relative.json"', 1, 'state_file', /"relative.json" \(must match pattern "\^\/"\); expected an absolute file path/],
    ['pid_file = 5', 1, 'pid_file', /must be string/],
    ['lockspaces = "lockd/files"', 1, 'lockspaces', /must match pattern/],
    ['lockspaces = 3', 1, 'lockspaces', /must be array,string/],
  ];
  for (const [text, line, key, re] of cases) {
    const e = errorOf(() => parseConfig(text, F));
    t.equal(e.problems.length, 1, `${text}: one problem (${e.message})`);
    t.equal(e.line, line, `${text}: line`);
    t.equal(e.key, key, `${text}: key`);
    t.match(e.message, re, text);
    t.ok(e.message.startsWith(`${F}:${line}:`), e.message);
  }

  // A list item is located at the item itself.
  const li = errorOf(() => parseConfig('lockspaces = [\n  "/ok",\n  "not/absolute",\n  7,\n]', F));
  t.same(
    li.problems.map((p) => [p.line, p.column, p.key]),
    [
      [3, 3, 'lockspaces'],
      [4, 3, 'lockspaces'],
    ],
  );
  t.match(li.problems[0]!.message, /invalid value for item 2 of 'lockspaces': "not\/absolute" \(must match pattern/);
  t.match(li.problems[1]!.message, /item 3 of 'lockspaces': 7 \(must be string\)/);

  // All problems at once, in file order; unknown keys do not hide them.
  const many = errorOf(() => parseConfig('storage_concurrency = 100\nbogus = 1\nmax_clients = "x"\nlog_level = 9\n', F));
  t.same(
    many.problems.map((p) => [p.line, p.key]),
    [
      [1, 'storage_concurrency'],
      [3, 'max_clients'],
      [4, 'log_level'],
    ],
  );
  t.equal(many.message.split('\n').length, 3, 'one line per problem');

  // The first occurrence is the one validated (the later one is ignored, as in libvirt).
  t.equal(configOf('max_clients = 5\nmax_clients = "junk"').maxClients, 5);
  const dupBad = errorOf(() => parseConfig('max_clients = "junk"\nmax_clients = 5', F));
  t.equal(dupBad.line, 1);
});

t.test('log_filters and log_outputs: libvirt syntax, structured', async (t) => {
  t.same(parseLogFilters('  1:locking   4:+object 2:util.file '), [
    { priority: 1, level: 'debug', match: 'locking', text: '1:locking' },
    { priority: 4, level: 'error', match: 'object', text: '4:+object' },
    { priority: 2, level: 'info', match: 'util.file', text: '2:util.file' },
  ]);
  t.same(parseLogFilters(''), []);
  t.same(parseLogFilters('1:a:b'), [{ priority: 1, level: 'debug', match: 'a', text: '1:a:b' }], "fields after the second ':' are ignored, as by virtlockd 9.0");
  t.same(
    parseLogOutputs('3:stderr 1:file:/var/log/x.log 3:journald 2:syslog:relockd 4:file:rel/x.log', '/cwd'),
    [
      { priority: 3, level: 'warn', kind: 'stderr', text: '3:stderr' },
      { priority: 1, level: 'debug', kind: 'file', path: '/var/log/x.log', text: '1:file:/var/log/x.log' },
      { priority: 3, level: 'warn', kind: 'journald', text: '3:journald' },
      { priority: 2, level: 'info', kind: 'syslog', ident: 'relockd', text: '2:syslog:relockd' },
      { priority: 4, level: 'error', kind: 'file', path: '/cwd/rel/x.log', text: '4:file:rel/x.log' },
    ],
  );
  t.same(
    parseLogOutputs('3:stderr 1:stderr 2:file:/a 4:file:/b 1:file:/a').map((o) => o.text),
    ['1:stderr', '4:file:/b', '1:file:/a'],
    'a later output to the same destination replaces the earlier one (libvirt)',
  );
  t.same(parseLogOutputs('+3:stderr').map((o) => o.priority), [3], "virStrToLong_uip takes a '+'");

  const bad: Array<[string, string, number, RegExp]> = [
    ['log_outputs', '"0:stderr"', 1, /output '0:stderr' has priority '0': expected 1 \(debug\), 2 \(info\), 3 \(warning\) or 4 \(error\)/],
    ['log_outputs', '"5:stderr"', 1, /priority '5'/],
    ['log_outputs', '"x:stderr"', 1, /priority 'x'/],
    ['log_outputs', '"3"', 1, /output '3' is malformed: expected LEVEL:DESTINATION/],
    ['log_outputs', '"3:console"', 1, /output '3:console' has destination 'console': expected stderr, journald, syslog:IDENT or file:PATH/],
    ['log_outputs', '"3:stderr 1:file"', 1, /output '1:file' does not fit destination 'file': expected LEVEL:file:PATH/],
    ['log_outputs', '"1:file:"', 1, /does not fit destination 'file'/],
    ['log_outputs', '"1:file:/a:b"', 1, /does not fit destination 'file'.*without ":"/],
    ['log_outputs', '"3:stderr:x"', 1, /does not fit destination 'stderr': expected LEVEL:stderr with nothing after it/],
    ['log_outputs', '"3:journald:x"', 1, /destination 'journald'/],
    ['log_outputs', '"3:syslog"', 1, /expected LEVEL:syslog:IDENT/],
    ['log_filters', '"1:locking 9:util"', 1, /filter '9:util' has priority '9'/],
    ['log_filters', '"locking"', 1, /filter 'locking' is malformed: expected LEVEL:MATCH/],
    ['log_filters', '"1:+"', 1, /filter '1:\+' has no match string/],
    ['log_filters', '"1:"', 1, /has no match string/],
  ];
  for (const [key, value, line, re] of bad) {
    const text = `\n\n${key} = ${value}`;
    const e = errorOf(() => parseConfig(text, F));
    t.equal(e.key, key, `${key} = ${value}`);
    t.equal(e.line, line + 2);
    t.equal(e.problems[0]!.column, key.length + 4);
    t.match(e.message, new RegExp(`^${F.replace(/\//g, '\\/')}:3:\\d+: invalid value for '${key}': `));
    t.match(e.message, re, `${key} = ${value}`);
  }

  const rel = parseConfig('log_outputs = "1:file:relative.log"', F);
  t.match(rel.warnings[0], /relative file: it is made absolute against the directory relockd was started in/);
});

t.test('log settings mapped onto pino', async (t) => {
  const plan = (text: string, opts?: Parameters<typeof loggingPlan>[1]) => loggingPlan(configOf(text), opts);
  t.same(plan(''), { level: 'info', outputs: [{ level: 'info', kind: 'stderr' }], filters: [] }, 'nothing set: the default level, on stderr');
  t.same(plan('', { defaultLevel: 'warn' }).level, 'warn');
  t.same(plan('', { verbose: true }), { level: 'debug', outputs: [{ level: 'debug', kind: 'stderr' }], filters: [] });
  t.same(plan('log_level = 4').outputs, [{ level: 'error', kind: 'stderr' }]);
  t.equal(plan('log_level = 4').level, 'error');
  t.equal(plan('log_level = 0', { defaultLevel: 'debug' }).level, 'debug', '0 = the default');
  t.same(plan('log_level = 3\nlog_outputs = "1:file:/var/log/r.log 4:journald"'), {
    level: 'warn',
    outputs: [
      { level: 'debug', kind: 'file', path: '/var/log/r.log' },
      { level: 'error', kind: 'journald' },
    ],
    filters: [],
  });
  const p = plan('log_level = 3\nlog_filters = "1:locking 4:object"\nlog_outputs = "1:stderr"');
  t.equal(p.level, 'debug', 'a debug filter and a debug output: debug (relockd has no categories, every filter matches)');
  t.equal(p.filters.length, 2);
  t.equal(plan('log_filters = "4:object"\nlog_outputs = "1:stderr"').level, 'error', 'the lowest filter priority bounds the level');
  t.equal(plan('log_filters = "1:locking"\nlog_outputs = "3:syslog:relockd"').level, 'warn', 'the lowest output priority bounds the level');
  t.equal(plan('', { defaultLevel: 'trace' }).level, 'trace', 'trace survives when nothing is configured');
});

t.test('unknown keys, repeated keys and odd paths are warnings', async (t) => {
  const text = [
    'max_client = 10', // typo
    'unix_sock_group = "libvirt"', // libvirtd's key, not virtlockd's
    'log_buffer_size = 64', // an old libvirt key
    'Max_Clients = 1',
    'max_clients = 20',
    'max_clients = 30',
    'lockspaces = [ "/a/", "/b//c", "/a/", "/d" ]',
    'owner_term_grace = 2',
  ].join('\n');
  const r = parseConfig(text, F);
  t.equal(r.config.maxClients, 20);
  t.same(r.config.lockspaces, ['/a/', '/b//c', '/d'], 'kept as written (libvirt names lock spaces by exact string), duplicates dropped');
  t.same(r.warnings, [
    `${F}:1:1: unknown setting 'max_client' ignored (did you mean 'max_clients'?)`,
    `${F}:2:1: unknown setting 'unix_sock_group' ignored`,
    `${F}:3:1: unknown setting 'log_buffer_size' ignored`,
    `${F}:4:1: unknown setting 'Max_Clients' ignored (did you mean 'max_clients'?)`,
    `${F}:6:1: 'max_clients' is set again and this setting is ignored: the first one (line 5) applies, as in libvirt`,
    `${F}:7:16: lock space '/a/' is not in normal form ('/a'); it is created as written, and libvirt's *_lockspace_dir must be the very same string`,
    `${F}:7:23: lock space '/b//c' is not in normal form ('/b/c'); it is created as written, and libvirt's *_lockspace_dir must be the very same string`,
    `${F}:7:32: lock space '/a/' is listed twice`,
  ]);
  const zero = parseConfig('admin_max_clients = 0', F);
  t.match(zero.warnings[0], /:1:21: 'admin_max_clients' is 0: that socket will accept no connection/);
  const dupUnknown = parseConfig('zzz = 1\nzzz = 2', F);
  t.equal(dupUnknown.warnings.length, 2, 'an unknown key is reported once, its repetition once');
});

t.test('loadConfig: files', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'relockd-config-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const missing = join(dir, 'none.conf');
  const r = loadConfig(missing, { required: false });
  t.same(r, { config: DEFAULT_CONFIG, warnings: [], file: missing, found: false, sources: {} }, 'missing and not required: defaults');
  const e = errorOf(() => loadConfig(missing, { required: true }));
  t.equal(e.message, `${missing}: cannot read the configuration file: no such file`, '-f FILE must exist');
  t.equal(e.file, missing);
  t.equal(e.line, 0);

  const sub = join(dir, 'adir');
  mkdirSync(sub);
  t.match(errorOf(() => loadConfig(sub, { required: false })).message, /cannot read the configuration file: it is a directory/, 'only ENOENT is forgiven');

  const good = join(dir, 'good.conf');
  writeFileSync(good, 'max_clients = 12 # VMs\nshutdown_policy = "refuse"\nlockspaces = [ "/srv/l" ]\n');
  const g = loadConfig(good, { required: true });
  t.equal(g.found, true);
  t.equal(g.file, good);
  t.equal(g.config.maxClients, 12);
  t.equal(g.config.shutdownPolicy, 'refuse');
  t.same(g.config.lockspaces, ['/srv/l']);

  const broken = join(dir, 'broken.conf');
  writeFileSync(broken, '# ok\nmax_clients = 12\nstorage_concurrency = 0\n');
  const b = errorOf(() => loadConfig(broken, { required: false }));
  t.match(b.message, new RegExp(`^${broken}:3:23: invalid value for 'storage_concurrency'`));

  const big = join(dir, 'big.conf');
  writeFileSync(big, '');
  truncateSync(big, MAX_CONFIG_FILE_SIZE + 1);
  t.match(errorOf(() => loadConfig(big, { required: false })).message, /larger than 10485760 bytes/, "virConfReadFile's 10 MiB limit");

  if (process.getuid?.() !== 0) {
    const secret = join(dir, 'secret.conf');
    writeFileSync(secret, 'a = 1');
    chmodSync(secret, 0);
    t.match(errorOf(() => loadConfig(secret, { required: false })).message, /permission denied/);
  }
});

// ---- the real virtlockd reads the same files ---------------------------------------------

const ALL_RELOCKD_KEYS = [
  'shutdown_policy = "drain"',
  'owner_term_grace = 3',
  'lockspaces = [ "/var/lib/libvirt/lockd/files",',
  '               "/var/lib/libvirt/lockd/lvmvolumes", ]',
  'state_file = "/run/relockd/state.json"',
  'pid_file = "/run/relockd.pid"',
  'storage_timeout = 30',
  'storage_concurrency = 4',
  'reexec_quiesce_timeout = 5',
].join('\n');

/** Accepted or refused by virtlockd (the harness puts log_level and log_outputs first, so they are not varied here). */
const DIFFERENTIAL: Array<[string, boolean]> = [
  [ALL_RELOCKD_KEYS, true],
  ['max_clients = 100 ; admin_max_clients = 7 # two on one line', true],
  ['max_clients = +7', true],
  ["log_filters = '1:locking 4:object'", true],
  ['log_filters = """1:locking"""', true],
  ['unknown_key = [ "a",\n   "b", ]\nother = []\nnested = [ [ 1 ], 2, "x" ]', true],
  ['   # indented comment\n\tmax_clients = 5   # trailing\n\n\n', true],
  ['max_clients = 5\r\nadmin_max_clients = 6\r\n', true],
  ['max_clients = 5\nmax_clients = "ignored: the first one wins"', true],
  ['neg = -5', true],
  ['big = 99999999999999999999999', true],
  ['max_clients = 4294967295', true],
  ['t1 = """a"""\nt2 = """multi\nline "x" \'y\' """', true],
  ["q = 'a\"b'", true],
  ['foo = 1 ;bar = 2;baz=3', true],
  ['foo = 1 # comment ; bar = "', true],
  ['foo\t=\t1\nfoo2 =2\nFoo2_x = ""', true],
  ['foo = [ "a"\n , "b"\n ]\nbar = [\n]\nbaz = [ 1, [ "x" ], ]', true],
  ['max_clients = 4294967296', false],
  ['foo = 1;;', false],
  ['foo = [ "a" ]x', false],
  ['foo = ]', false],
  ['= 1', false],
  ['foo = """never closed', false],
  ['max_clients = 0', true],
  ['max_clients = "10"', false],
  ['max_clients = -1', false],
  ['max_clients = 1.5', false],
  ['max_clients = 10s', false],
  ['foo = yes', false],
  ['foo = 1 bar = 2', false],
  ['foo = [ "a", # c\n "b" ]', false],
  ['foo = "abc', false],
  ['foo = "abc\ndef"', false],
  ['_foo = 1', false],
  ['foo.bar = 1', false],
  ['foo = [ , ]', false],
  ['foo = +', false],
  ['log_filters = "1:a:b"', true],
  ['log_filters = "5:locking"', false],
  ['log_filters = 3', false],
  ['admin_max_clients = [ 1 ]', false],
];

t.test('relockd and the real virtlockd accept the same files', { skip: virtlockdAvailable() ? false : `real virtlockd unavailable: ${virtlockdUnavailableReason()}` }, async (t) => {
  for (const [text, accepted] of DIFFERENTIAL) {
    let virtlockdOk: boolean;
    let why = '';
    try {
      const d = await startVirtlockd({ extraConfig: text, startTimeoutMs: 10_000 });
      await d.stop();
      virtlockdOk = true;
    } catch (err) {
      virtlockdOk = false;
      why = (err as Error).message;
    }
    t.equal(virtlockdOk, accepted, `virtlockd ${accepted ? 'accepts' : 'refuses'} ${JSON.stringify(text)} ${why}`);
    let relockdOk = true;
    try {
      parseConfig(text, F);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      relockdOk = false;
    }
    t.equal(relockdOk, accepted, `relockd ${accepted ? 'accepts' : 'refuses'} ${JSON.stringify(text)}`);
  }
});
