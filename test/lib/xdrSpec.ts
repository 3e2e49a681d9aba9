// A small reader of rpcgen `.x` files (RFC 4506 XDR language, the subset
// libvirt uses) and a generic XDR encoder/decoder driven by the parsed
// types. It shares no code with src/rpc/xdr.ts on purpose: the wire drift
// tests (test/wire-*.test.ts) check relockd's codecs against the .x files
// through it, so a change to our codec cannot hide behind itself.

export type XType =
  | { kind: 'int' | 'uint' | 'hyper' | 'uhyper' | 'bool' | 'double' | 'void' }
  | { kind: 'string'; max: number }
  | { kind: 'opaque'; fixed: number | null; max: number }
  | { kind: 'ref'; name: string }
  | { kind: 'optional'; of: XType }
  | { kind: 'array'; of: XType; fixed: number | null; max: number }
  | { kind: 'struct'; fields: XField[] }
  | { kind: 'union'; discName: string; discType: XType; arms: XArm[] }
  | { kind: 'enum'; values: Map<string, number> };

export interface XField {
  name: string;
  type: XType;
}
export interface XArm {
  value: number;
  name: string;
  type: XType;
}

export interface XSpec {
  consts: Map<string, number>;
  types: Map<string, XType>;
  /** Every enum member, e.g. ADMIN_PROC_CONNECT_OPEN → 1. */
  enumValues: Map<string, number>;
  /** The procedure enum: the enum whose members contain `_PROC_`. */
  procedures: Map<string, number>;
}

class XSpecError extends Error {
  override name = 'XSpecError';
}

/** Constants the .x files take from C headers (libvirt's internal.h, libvirt-common.h). */
export const C_CONSTANTS: Readonly<Record<string, number>> = {
  VIR_UUID_BUFLEN: 16,
  VIR_TYPED_PARAM_INT: 1,
  VIR_TYPED_PARAM_UINT: 2,
  VIR_TYPED_PARAM_LLONG: 3,
  VIR_TYPED_PARAM_ULLONG: 4,
  VIR_TYPED_PARAM_DOUBLE: 5,
  VIR_TYPED_PARAM_BOOLEAN: 6,
  VIR_TYPED_PARAM_STRING: 7,
};

const UNBOUNDED = 0xffffffff;

function tokenize(src: string): string[] {
  const noComments = src
    .replace(/\/\*[\s\S]*?\*\//g, ' ')
    .split('\n')
    .filter((l) => !l.trimStart().startsWith('%'))
    .join('\n');
  return noComments.match(/0x[0-9a-fA-F]+|-?\d+|[A-Za-z_][A-Za-z0-9_]*|[{}()<>[\];:,=*]/g) ?? [];
}

export function parseX(src: string, extraConsts: Readonly<Record<string, number>> = C_CONSTANTS): XSpec {
  const t = tokenize(src);
  let i = 0;
  const consts = new Map<string, number>(Object.entries(extraConsts));
  const types = new Map<string, XType>();
  const enumValues = new Map<string, number>();
  let procedures = new Map<string, number>();

  const peek = () => t[i];
  const next = () => {
    const v = t[i++];
    if (v === undefined) throw new XSpecError('unexpected end of file');
    return v;
  };
  const expect = (s: string) => {
    const v = next();
    if (v !== s) throw new XSpecError(`expected '${s}', got '${v}' (token ${i - 1})`);
  };
  const value = (): number => {
    const v = next();
    if (/^-?\d+$/.test(v) || /^0x/i.test(v)) return Number(v);
    const c = consts.get(v) ?? enumValues.get(v);
    if (c === undefined) throw new XSpecError(`unknown constant ${v}`);
    return c;
  };

  /** A type specifier (without declarator). */
  const typeSpec = (): XType => {
    const w = next();
    switch (w) {
      case 'unsigned': {
        const n = peek();
        if (n === 'int') return next(), { kind: 'uint' };
        if (n === 'hyper') return next(), { kind: 'uhyper' };
        if (n === 'long') return next(), { kind: 'uint' };
        return { kind: 'uint' };
      }
      case 'int':
      case 'long':
        return { kind: 'int' };
      case 'hyper':
        return { kind: 'hyper' };
      case 'bool':
        return { kind: 'bool' };
      case 'double':
        return { kind: 'double' };
      case 'void':
        return { kind: 'void' };
      case 'string':
        return { kind: 'string', max: UNBOUNDED };
      case 'opaque':
        return { kind: 'opaque', fixed: null, max: UNBOUNDED };
      case 'struct':
        return structBody();
      case 'union':
        return unionBody();
      case 'enum':
        return enumBody();
      default:
        return { kind: 'ref', name: w };
    }
  };

  /** Declarator: `*name`, `name`, `name<max>`, `name[n]`, applied to a base type. */
  const declaration = (): XField | null => {
    const base = typeSpec();
    if (base.kind === 'void') return null;
    let type = base;
    if (peek() === '*') {
      next();
      type = { kind: 'optional', of: base };
    }
    const name = next();
    if (peek() === '<') {
      next();
      const max = peek() === '>' ? UNBOUNDED : value();
      expect('>');
      if (base.kind === 'string') type = { kind: 'string', max };
      else if (base.kind === 'opaque') type = { kind: 'opaque', fixed: null, max };
      else type = { kind: 'array', of: base, fixed: null, max };
    } else if (peek() === '[') {
      next();
      const n = value();
      expect(']');
      if (base.kind === 'opaque') type = { kind: 'opaque', fixed: n, max: n };
      else type = { kind: 'array', of: base, fixed: n, max: n };
    }
    return { name, type };
  };

  function structBody(): XType {
    expect('{');
    const fields: XField[] = [];
    while (peek() !== '}') {
      const d = declaration();
      expect(';');
      if (d) fields.push(d);
    }
    expect('}');
    return { kind: 'struct', fields };
  }

  function unionBody(): XType {
    expect('switch');
    expect('(');
    const discType = typeSpec();
    const discName = next();
    expect(')');
    expect('{');
    const arms: XArm[] = [];
    while (peek() !== '}') {
      const values: number[] = [];
      if (peek() === 'default') throw new XSpecError('union default arms are not supported');
      while (peek() === 'case') {
        next();
        values.push(value());
        expect(':');
      }
      const d = declaration();
      expect(';');
      for (const v of values) arms.push({ value: v, name: d?.name ?? '', type: d?.type ?? { kind: 'void' } });
    }
    expect('}');
    return { kind: 'union', discName, discType, arms };
  }

  function enumBody(): XType {
    expect('{');
    const values = new Map<string, number>();
    while (peek() !== '}') {
      const name = next();
      expect('=');
      const v = value();
      values.set(name, v);
      enumValues.set(name, v);
      if (peek() === ',') next();
    }
    expect('}');
    if ([...values.keys()].some((k) => k.includes('_PROC_'))) procedures = values;
    return { kind: 'enum', values };
  }

  while (i < t.length) {
    const w = next();
    if (w === 'const') {
      const name = next();
      expect('=');
      consts.set(name, value());
      expect(';');
    } else if (w === 'typedef') {
      const d = declaration();
      expect(';');
      if (d) types.set(d.name, d.type);
    } else if (w === 'struct' || w === 'union' || w === 'enum') {
      const name = next();
      const body = w === 'struct' ? structBody() : w === 'union' ? unionBody() : enumBody();
      expect(';');
      types.set(name, body);
    } else {
      throw new XSpecError(`unexpected '${w}' at top level (token ${i - 1})`);
    }
  }
  return { consts, types, enumValues, procedures };
}

export function resolve(spec: XSpec, t: XType): XType {
  let x = t;
  for (let n = 0; x.kind === 'ref'; n++) {
    const r = spec.types.get(x.name);
    if (!r || n > 32) throw new XSpecError(`unknown type ${x.name}`);
    x = r;
  }
  return x;
}

// ---- generic codec ---------------------------------------------------------------
// Values: struct → object by field name; union → { [discName]: n, [armName]: v };
// string → JS string of its bytes (latin1, one char per byte); opaque → Buffer;
// hyper → bigint; optional → value or null; bool → boolean.

const pad = (n: number) => (4 - (n % 4)) % 4;

export function xEncode(spec: XSpec, type: XType, v: unknown): Buffer {
  const parts: Buffer[] = [];
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n >>> 0);
    parts.push(b);
  };
  const bytes = (b: Buffer) => {
    parts.push(b, Buffer.alloc(pad(b.length)));
  };
  const enc = (t0: XType, val: any, path: string): void => {
    const t = resolve(spec, t0);
    switch (t.kind) {
      case 'int': {
        const b = Buffer.alloc(4);
        b.writeInt32BE(val);
        parts.push(b);
        return;
      }
      case 'uint':
        return u32(val);
      case 'bool':
        return u32(val ? 1 : 0);
      case 'hyper':
      case 'uhyper': {
        const b = Buffer.alloc(8);
        if (t.kind === 'hyper') b.writeBigInt64BE(BigInt(val));
        else b.writeBigUInt64BE(BigInt(val));
        parts.push(b);
        return;
      }
      case 'double': {
        const b = Buffer.alloc(8);
        b.writeDoubleBE(val);
        parts.push(b);
        return;
      }
      case 'void':
        return;
      case 'string': {
        const b = Buffer.from(String(val), 'latin1');
        u32(b.length);
        return bytes(b);
      }
      case 'opaque': {
        const b = Buffer.from(val as Uint8Array);
        if (t.fixed !== null) {
          if (b.length !== t.fixed) throw new XSpecError(`${path}: opaque[${t.fixed}] given ${b.length} bytes`);
        } else u32(b.length);
        return bytes(b);
      }
      case 'optional':
        if (val === null || val === undefined) return u32(0);
        u32(1);
        return enc(t.of, val, path);
      case 'array': {
        const a = val as unknown[];
        if (t.fixed === null) u32(a.length);
        a.forEach((x, k) => enc(t.of, x, `${path}[${k}]`));
        return;
      }
      case 'struct':
        for (const f of t.fields) enc(f.type, val[f.name], `${path}.${f.name}`);
        return;
      case 'union': {
        const d = val[t.discName];
        const arm = t.arms.find((a) => a.value === d);
        if (!arm) throw new XSpecError(`${path}: no arm for ${t.discName}=${d}`);
        enc(t.discType, d, `${path}.${t.discName}`);
        return enc(arm.type, val[arm.name], `${path}.${arm.name}`);
      }
      case 'enum':
        return u32(val);
      default:
        throw new XSpecError(`${path}: cannot encode ${t.kind}`);
    }
  };
  enc(type, v, '$');
  return Buffer.concat(parts);
}

/** Decodes one value of `type`; throws unless exactly all of `buf` is consumed. */
export function xDecode(spec: XSpec, type: XType, buf: Buffer): unknown {
  let pos = 0;
  const need = (n: number, path: string) => {
    if (pos + n > buf.length) throw new XSpecError(`${path}: truncated at offset ${pos} (need ${n} of ${buf.length - pos})`);
  };
  const u32 = (path: string) => {
    need(4, path);
    const v = buf.readUInt32BE(pos);
    pos += 4;
    return v;
  };
  const dec = (t0: XType, path: string): unknown => {
    const t = resolve(spec, t0);
    switch (t.kind) {
      case 'int': {
        need(4, path);
        const v = buf.readInt32BE(pos);
        pos += 4;
        return v;
      }
      case 'uint':
      case 'enum':
        return u32(path);
      case 'bool': {
        const v = u32(path);
        if (v > 1) throw new XSpecError(`${path}: bad bool ${v}`);
        return v === 1;
      }
      case 'hyper':
      case 'uhyper': {
        need(8, path);
        const v = t.kind === 'hyper' ? buf.readBigInt64BE(pos) : buf.readBigUInt64BE(pos);
        pos += 8;
        return v;
      }
      case 'double': {
        need(8, path);
        const v = buf.readDoubleBE(pos);
        pos += 8;
        return v;
      }
      case 'void':
        return undefined;
      case 'string':
      case 'opaque': {
        const n = t.kind === 'opaque' && t.fixed !== null ? t.fixed : u32(path);
        if (n > t.max) throw new XSpecError(`${path}: length ${n} exceeds ${t.max}`);
        need(n + pad(n), path);
        const b = Buffer.from(buf.subarray(pos, pos + n));
        pos += n + pad(n);
        return t.kind === 'string' ? b.toString('latin1') : b;
      }
      case 'optional': {
        const d = u32(path);
        if (d > 1) throw new XSpecError(`${path}: bad optional discriminant ${d}`);
        return d ? dec(t.of, path) : null;
      }
      case 'array': {
        const n = t.fixed ?? u32(path);
        if (n > t.max) throw new XSpecError(`${path}: ${n} elements exceed ${t.max}`);
        const out: unknown[] = [];
        for (let k = 0; k < n; k++) out.push(dec(t.of, `${path}[${k}]`));
        return out;
      }
      case 'struct': {
        const o: Record<string, unknown> = {};
        for (const f of t.fields) o[f.name] = dec(f.type, `${path}.${f.name}`);
        return o;
      }
      case 'union': {
        const d = dec(t.discType, `${path}.${t.discName}`) as number;
        const arm = t.arms.find((a) => a.value === d);
        if (!arm) throw new XSpecError(`${path}: no arm for ${t.discName}=${d}`);
        return { [t.discName]: d, [arm.name]: dec(arm.type, `${path}.${arm.name}`) };
      }
      default:
        throw new XSpecError(`${path}: cannot decode ${t.kind}`);
    }
  };
  const v = dec(type, '$');
  if (pos !== buf.length) throw new XSpecError(`$: ${buf.length - pos} trailing bytes after offset ${pos}`);
  return v;
}

/**
 * A value of `type` in which every number and string is distinct (a counter),
 * so a decoder that reads fields in the wrong order is caught. `variant` 0:
 * every optional present, a struct's bools false, true, false…; 1: every
 * optional null, the bools inverted; unions take arm (counter % arms).
 */
export function xSample(spec: XSpec, type: XType, variant: 0 | 1, hint?: (path: string, t: XType) => unknown): unknown {
  let n = variant === 0 ? 1 : 101;
  const gen = (t0: XType, path: string): unknown => {
    const h = hint?.(path, t0);
    if (h !== undefined) return h;
    const t = resolve(spec, t0);
    switch (t.kind) {
      case 'int':
        return n++;
      case 'uint':
      case 'enum':
        return n++;
      case 'hyper':
      case 'uhyper':
        return BigInt(1000 + n++);
      case 'bool':
        return variant === 1;
      case 'double':
        return n++ + 0.5;
      case 'void':
        return undefined;
      case 'string':
        return `${path.split('.').pop()!.replace(/\W/g, '')}${n++}`;
      case 'opaque': {
        const len = t.fixed ?? 5;
        const b = Buffer.alloc(len);
        for (let k = 0; k < len; k++) b[k] = (n + k) & 0xff;
        n++;
        return b;
      }
      case 'optional':
        return variant === 0 ? gen(t.of, path) : null;
      case 'array': {
        const len = t.fixed ?? 2;
        return Array.from({ length: len }, (_, k) => gen(t.of, `${path}[${k}]`));
      }
      case 'struct': {
        // The k-th bool of a struct alternates (false, true, … in variant 0),
        // so two swapped bools differ too.
        const o: Record<string, unknown> = {};
        let k = 0;
        for (const f of t.fields) {
          const fp = `${path}.${f.name}`;
          o[f.name] = resolve(spec, f.type).kind === 'bool' && hint?.(fp, f.type) === undefined ? (k++ % 2 === 1) !== (variant === 1) : gen(f.type, fp);
        }
        return o;
      }
      case 'union': {
        const arm = t.arms[n++ % t.arms.length]!;
        return { [t.discName]: arm.value, [arm.name]: gen(arm.type, `${path}.${arm.name}`) };
      }
      default:
        throw new XSpecError(`${path}: cannot sample ${t.kind}`);
    }
  };
  return gen(type, '$');
}
