// Where relockctl writes: one line (newline added) to stdout or stderr, or
// one pretty-printed JSON document (--json) to stdout.

export const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`);
export const err = (s: string) => process.stderr.write(s.endsWith('\n') ? s : `${s}\n`);
export const json = (v: unknown) => out(JSON.stringify(v, null, 2));
