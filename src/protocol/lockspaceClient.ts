// Client side of the lock-space program: what libvirt's lockd plugin sends,
// for relockctl, tests and benchmarks.

import { RpcClient } from '../rpc/client.js';
import type { Owner } from '../locks/lockManager.js';
import { LOCKSPACE_PROGRAM, LOCKSPACE_VERSION, Proc, codec } from './lockspace.js';
import { fromBuffer, fromUnicode } from '../byteString.js';

/** A path or name: a string is sent as its UTF-8 bytes, a Uint8Array byte for byte. */
export type WireName = string | Uint8Array;

const wire = (x: WireName): string => (typeof x === 'string' ? fromUnicode(x) : fromBuffer(x));

export class LockspaceClient {
  constructor(readonly rpc: RpcClient) {}

  static async connect(path: string): Promise<LockspaceClient> {
    return new LockspaceClient(await RpcClient.connect(path));
  }

  private async call(proc: number, encode: (w: import('../rpc/xdr.js').XdrWriter) => void): Promise<void> {
    await this.rpc.call(LOCKSPACE_PROGRAM, LOCKSPACE_VERSION, proc, encode);
  }

  register(owner: Owner, flags = 0): Promise<void> {
    return this.call(Proc.REGISTER, (w) => codec.register.encode(w, { owner, flags }));
  }

  restrict(flags = 0): Promise<void> {
    return this.call(Proc.RESTRICT, (w) => codec.flags.encode(w, { flags }));
  }

  newLockspace(path: WireName, flags = 0): Promise<void> {
    return this.call(Proc.NEW, (w) => codec.path.encode(w, { path: wire(path), flags }));
  }

  createLockspace(path: WireName): Promise<void> {
    return this.call(Proc.CREATE_LOCKSPACE, (w) => codec.lockspace.encode(w, { path: wire(path) }));
  }

  createResource(path: WireName, name: WireName, flags = 0): Promise<void> {
    return this.call(Proc.CREATE_RESOURCE, (w) => codec.resource.encode(w, { path: wire(path), name: wire(name), flags }));
  }

  deleteResource(path: WireName, name: WireName, flags = 0): Promise<void> {
    return this.call(Proc.DELETE_RESOURCE, (w) => codec.resource.encode(w, { path: wire(path), name: wire(name), flags }));
  }

  acquire(path: WireName, name: WireName, flags = 0): Promise<void> {
    return this.call(Proc.ACQUIRE_RESOURCE, (w) => codec.resource.encode(w, { path: wire(path), name: wire(name), flags }));
  }

  release(path: WireName, name: WireName, flags = 0): Promise<void> {
    return this.call(Proc.RELEASE_RESOURCE, (w) => codec.resource.encode(w, { path: wire(path), name: wire(name), flags }));
  }

  ping(): Promise<void> {
    return this.rpc.ping();
  }

  close(): void {
    this.rpc.close();
  }
}
