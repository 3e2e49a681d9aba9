// libvirt's configuration file syntax ("virConf", src/util/virconf.c), as
// read by virtlockd and every other libvirt daemon. relockd reads the same
// files, so it accepts exactly what virtlockd accepts, and adds nothing
// virtlockd would refuse: a virtlockd.conf that relockd accepts still works
// after going back to virtlockd.
//
//   file       := statement* ; statements separated by end of line or ';'
//   statement  := blank* ( '#' comment | name blank* '=' blank* value blank* ('#' comment)? )
//   name       := [A-Za-z] [A-Za-z0-9_]*
//   value      := number | string | list
//   number     := ('+'|'-')? [0-9]+          (decimal integers only; '-' makes it signed)
//   string     := '"' [^"\n\r]* '"' | "'" [^'\n\r]* "'" | '"""' anything '"""'
//                 (no escape sequences at all; only """ strings span lines)
//   list       := '[' ws* ( value ws* ( ',' ws* value ws* )* ( ',' ws* )? )? ']'
//                 (ws includes newlines; no comments inside a list)
//
// Differences from virconf.c, all in the accepting direction: a file made of
// blank lines only is accepted (virconf.c says "expecting a name"), and a
// triple-quoted string ending the file is accepted. Duplicate keys: libvirt
// uses the first occurrence; so do we (parseVirConf reports the others).

import { ConfigError } from './errors.js';

type VirConfScalar = number | string;
export type VirConfValue = VirConfScalar | VirConfValue[];

export interface Position {
  /** 1-based line. */
  line: number;
  /** 1-based column (in UTF-16 code units). */
  column: number;
}

export interface VirConfEntry extends Position {
  key: string;
  value: VirConfValue;
  /** virConf's value type: 'signed' is a number written with a '-'. */
  type: 'unsigned' | 'signed' | 'string' | 'list';
  /** Where the value starts. */
  valueAt: Position;
  /** For a list: where each item starts. */
  items?: Position[];
  /** The comment after the value on the same line, without '#'. */
  comment?: string;
}

export interface VirConfDocument {
  file: string;
  /** Every assignment, in file order (duplicates included). */
  entries: VirConfEntry[];
  /** The entry libvirt uses for each key: the first one. */
  byKey: Map<string, VirConfEntry>;
  /** Later assignments of a key already set (libvirt ignores them). */
  duplicates: VirConfEntry[];
}

/** virConfReadFile's limit. */
export const MAX_CONFIG_FILE_SIZE = 10 * 1024 * 1024;

// Runs of characters are skipped with sticky regular expressions, not one
// call per character: the file is parsed once at start-up and once before
// each re-exec, both inside the re-exec blackout, by code that has not been
// optimised yet (interpreted, the per-character loop took ~5 ms for
// virtlockd.conf's 3 kB of comments).
const BLANKS = /[ \t]*/y;
const BLANKS_AND_EOL = /[ \t\n\r]*/y;
const REST_OF_LINE = /[^\n\r]*/y;
const NAME_CHARS = /[A-Za-z0-9_]*/y;
const DIGITS = /[0-9]*/y;
const IN_DOUBLE_QUOTES = /[^"\n\r]*/y;
const IN_SINGLE_QUOTES = /[^'\n\r]*/y;

const isBlank = (c: string | undefined) => c === ' ' || c === '\t';
const isEol = (c: string | undefined) => c === '\n' || c === '\r';
const isDigit = (c: string | undefined) => c !== undefined && c >= '0' && c <= '9';
const isAlpha = (c: string | undefined) => c !== undefined && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));

/** Shows the character found where something else was expected. */
function found(c: string | undefined): string {
  if (c === undefined) return 'end of file';
  if (c === '\n' || c === '\r') return 'end of line';
  if (c === '\t') return 'a tab';
  const code = c.codePointAt(0)!;
  if (code < 0x20 || code === 0x7f) return `character U+${code.toString(16).padStart(4, '0').toUpperCase()}`;
  return `'${c}'`;
}

class Parser {
  private pos = 0;
  private line = 1;
  private lineStart = 0;
  readonly entries: VirConfEntry[] = [];

  constructor(
    private readonly text: string,
    private readonly file: string,
  ) {}

  private peek(): string | undefined {
    return this.pos < this.text.length ? this.text[this.pos] : undefined;
  }

  private at(): Position {
    return { line: this.line, column: this.pos - this.lineStart + 1 };
  }

  private next(): void {
    if (this.pos >= this.text.length) return;
    if (this.text[this.pos] === '\n') {
      this.line++;
      this.lineStart = this.pos + 1;
    }
    this.pos++;
  }

  /** Moves to `end` (≥ pos), counting the lines passed. */
  private advanceTo(end: number): void {
    for (let nl = this.text.indexOf('\n', this.pos); nl !== -1 && nl < end; nl = this.text.indexOf('\n', nl + 1)) {
      this.line++;
      this.lineStart = nl + 1;
    }
    this.pos = end;
  }

  /** Skips what the sticky `run` matches here (it matches the empty string too). */
  private skip(run: RegExp): void {
    run.lastIndex = this.pos;
    run.test(this.text);
    this.advanceTo(run.lastIndex);
  }

  private fail(message: string, at: Position = this.at(), key?: string): never {
    throw new ConfigError([{ file: this.file, line: at.line, column: at.column, message: `syntax error: ${message}`, ...(key ? { key } : {}) }]);
  }

  private skipBlanks(): void {
    this.skip(BLANKS);
  }

  private skipBlanksAndEol(): void {
    this.skip(BLANKS_AND_EOL);
  }

  private restOfLine(): string {
    const start = this.pos;
    this.skip(REST_OF_LINE);
    return this.text.slice(start, this.pos);
  }

  parse(): void {
    while (this.pos < this.text.length) {
      const key = this.statement();
      this.separator(key);
    }
  }

  /** Returns the key assigned, if the statement was an assignment. */
  private statement(): string | undefined {
    this.skipBlanksAndEol();
    if (this.peek() === undefined) return undefined; // only blank lines left
    if (this.peek() === '#') {
      this.next();
      this.restOfLine();
      return undefined;
    }
    const start = this.at();
    if (!isAlpha(this.peek())) {
      this.fail(`expected a setting name (a letter, then letters, digits or '_'), found ${found(this.peek())}`);
    }
    const from = this.pos;
    this.skip(NAME_CHARS);
    const key = this.text.slice(from, this.pos);
    this.skipBlanks();
    if (this.peek() !== '=') {
      this.fail(`expected '=' after the setting name '${key}', found ${found(this.peek())}`, this.at(), key);
    }
    this.next();
    this.skipBlanks();
    const valueAt = this.at();
    const { value, type, items } = this.value(key);
    this.skipBlanks();
    let comment: string | undefined;
    if (this.peek() === '#') {
      this.next();
      comment = this.restOfLine();
    }
    this.entries.push({ key, value, type, ...start, valueAt, ...(items ? { items } : {}), ...(comment !== undefined ? { comment } : {}) });
    return key;
  }

  private separator(key: string | undefined): void {
    this.skipBlanks();
    if (this.peek() === undefined) return;
    if (isEol(this.peek())) {
      this.skipBlanksAndEol();
    } else if (this.peek() === ';') {
      this.next();
      this.skipBlanksAndEol();
    } else {
      const what = key === undefined ? 'the comment' : `the value of '${key}'`;
      const glued = !isBlank(this.text[this.pos - 1]);
      const hint =
        key === undefined ? '' : glued ? ' (numbers are decimal integers only, strings need quotes)' : isAlpha(this.peek()) ? " (one setting per line, or separate them with ';')" : '';
      this.fail(`expected the end of the line, ';' or a '#' comment after ${what}, found ${found(this.peek())}${hint}`, this.at(), key);
    }
  }

  private value(key: string): { value: VirConfValue; type: VirConfEntry['type']; items?: Position[] } {
    this.skipBlanks();
    const c = this.peek();
    if (c === '"' || c === "'") return { value: this.string(key), type: 'string' };
    if (c === '[') return this.list(key);
    if (isDigit(c) || c === '-' || c === '+') return this.number(key);
    const hint = c === '#' ? ' (comments are not allowed here or inside a list)' : isAlpha(c) ? ' (strings need double quotes)' : '';
    return this.fail(`expected a value for '${key}' (a number, a "string" or a [ list ]), found ${found(c)}${hint}`, this.at(), key);
  }

  private number(key: string): { value: number; type: 'signed' | 'unsigned' } {
    const start = this.pos;
    const negative = this.peek() === '-';
    if (this.peek() === '-' || this.peek() === '+') this.next();
    if (!isDigit(this.peek())) this.fail(`unterminated number for '${key}': expected a digit after the sign, found ${found(this.peek())}`, this.at(), key);
    this.skip(DIGITS);
    // Anything glued to the digits (1.5, 0x10, 10s) is refused by the separator check, as by libvirt.
    return { value: Number(this.text.slice(start, this.pos)), type: negative ? 'signed' : 'unsigned' };
  }

  private string(key: string): string {
    const open = this.at();
    if (this.text.startsWith('"""', this.pos)) {
      for (let i = 0; i < 3; i++) this.next();
      const from = this.pos;
      const close = this.text.indexOf('"""', this.pos);
      this.advanceTo(close === -1 ? this.text.length : close);
      if (this.peek() === undefined) this.fail(`unterminated string for '${key}': no closing """ for the one opened here`, open, key);
      const s = this.text.slice(from, this.pos);
      for (let i = 0; i < 3; i++) this.next();
      return s;
    }
    const quote = this.peek()!;
    this.next();
    const from = this.pos;
    this.skip(quote === '"' ? IN_DOUBLE_QUOTES : IN_SINGLE_QUOTES);
    if (this.peek() !== quote) {
      this.fail(
        `unterminated string for '${key}': expected a closing ${quote} before the ${this.peek() === undefined ? 'end of the file' : 'end of the line'} (strings have no escapes and do not span lines; use """...""" for that)`,
        open,
        key,
      );
    }
    const s = this.text.slice(from, this.pos);
    this.next();
    return s;
  }

  private list(key: string): { value: VirConfValue[]; type: 'list'; items: Position[] } {
    const open = this.at();
    this.next(); // '['
    const value: VirConfValue[] = [];
    const items: Position[] = [];
    this.skipBlanksAndEol();
    if (this.peek() !== undefined && this.peek() !== ']') {
      items.push(this.at());
      value.push(this.value(key).value);
      this.skipBlanksAndEol();
    }
    while (this.peek() !== undefined && this.peek() !== ']') {
      if (this.peek() !== ',') {
        const hint = this.peek() === '#' ? ' (comments are not allowed inside a list)' : '';
        this.fail(`expected ',' or ']' in the list for '${key}' (opened at ${open.line}:${open.column}), found ${found(this.peek())}${hint}`, this.at(), key);
      }
      this.next();
      this.skipBlanksAndEol();
      if (this.peek() === ']') break;
      if (this.peek() === undefined) break;
      items.push(this.at());
      value.push(this.value(key).value);
      this.skipBlanksAndEol();
    }
    if (this.peek() !== ']') this.fail(`the list for '${key}' opened here is not closed with ']'`, open, key);
    this.next();
    return { value, type: 'list', items };
  }
}

/**
 * Parses virConf text. Throws a ConfigError naming file:line:column and what
 * was expected on the first syntax error (libvirt also stops at the first).
 */
export function parseVirConf(text: string, file: string): VirConfDocument {
  const p = new Parser(text, file);
  p.parse();
  const byKey = new Map<string, VirConfEntry>();
  const duplicates: VirConfEntry[] = [];
  for (const e of p.entries) {
    if (byKey.has(e.key)) duplicates.push(e);
    else byKey.set(e.key, e);
  }
  return { file, entries: p.entries, byKey, duplicates };
}

/** A value written back in virConf syntax (for messages). */
export function formatVirConfValue(v: VirConfValue): string {
  if (typeof v === 'number') return String(v);
  if (Array.isArray(v)) return `[ ${v.map(formatVirConfValue).join(', ')} ]`;
  if (v.includes('\n') || (v.includes('"') && v.includes("'"))) return `"""${v}"""`;
  return v.includes('"') ? `'${v}'` : `"${v}"`;
}
