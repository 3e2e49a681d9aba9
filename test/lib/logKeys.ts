// A JSON log line with the same key twice in one object is legal JSON to
// most parsers, which keep the last: pino appends a child's bindings and a
// call's fields to the line as they come, so an "owner" or "pid" bound twice
// prints twice, and a reader sees only one of them (e.g. the owner's pid
// where the daemon's was meant). This finds such lines.

/** The keys that occur more than once in one object of the JSON text `line` ("a.b" for nested objects). */
export function duplicateKeys(line: string): string[] {
  const dups: string[] = [];
  const stack: Array<{ keys: Set<string>; path: string } | null> = []; // null: an array
  let i = 0;
  let lastString = '';
  let pendingKey: string | null = null;
  const readString = (): string => {
    let out = '';
    i++; // opening quote
    while (i < line.length && line[i] !== '"') {
      if (line[i] === '\\') {
        out += line.slice(i, i + 2);
        i += 2;
      } else out += line[i++];
    }
    i++; // closing quote
    return out;
  };
  while (i < line.length) {
    const c = line[i]!;
    if (c === '"') {
      lastString = readString();
      continue;
    }
    const top = stack[stack.length - 1];
    if (c === ':' && top) {
      if (top.keys.has(lastString)) dups.push(top.path + lastString);
      top.keys.add(lastString);
      pendingKey = lastString;
    } else if (c === '{') {
      const parent = stack[stack.length - 1];
      stack.push({ keys: new Set(), path: parent && pendingKey !== null ? `${parent.path}${pendingKey}.` : '' });
      pendingKey = null;
    } else if (c === '[') {
      stack.push(null);
      pendingKey = null;
    } else if (c === '}' || c === ']') stack.pop();
    i++;
  }
  return dups;
}

/** The lines of a JSON log (one event per line) with a key twice, each with those keys. */
export function linesWithDuplicateKeys(log: string): string[] {
  return log
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => ({ l, d: duplicateKeys(l) }))
    .filter((x) => x.d.length)
    .map((x) => `${x.d.join(', ')} twice in: ${x.l.slice(0, 300)}`);
}
