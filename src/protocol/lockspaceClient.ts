// Client side of the lock-space program: what libvirt's lockd plugin sends,
// for relockctl, tests and benchmarks.

import { RpcClient } from '../rpc/client.js';
import type { Owner } from '../locks/lockManager.js';
import { LOCKSPACE_PROGRAM, LOCKSPACE_VERSION, Proc, codec } from './lockspace.js';

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

  newLockspace(path: string, flags = 0): Promise<void> {
    return this.call(Proc.NEW, (w) => codec.path.encode(w, { path, flags }));
  }

  createLockspace(path: string): Promise<void> {
    return this.call(Proc.CREATE_LOCKSPACE, (w) => codec.lockspace.encode(w, { path }));
  }

  createResource(path: string, name: string, flags = 0): Promise<void> {
    return this.call(Proc.CREATE_RESOURCE, (w) => codec.resource.encode(w, { path, name, flags }));
  }

  deleteResource(path: string, name: string, flags = 0): Promise<void> {
    return this.call(Proc.DELETE_RESOURCE, (w) => codec.resource.encode(w, { path, name, flags }));
  }

  acquire(path: string, name: string, flags = 0): Promise<void> {
    return this.call(Proc.ACQUIRE_RESOURCE, (w) => codec.resource.encode(w, { path, name, flags }));
  }

  release(path: string, name: string, flags = 0): Promise<void> {
    return this.call(Proc.RELEASE_RESOURCE, (w) => codec.resource.encode(w, { path, name, flags }));
  }

  ping(): Promise<void> {
    return this.rpc.ping();
  }

  close(): void {
    this.rpc.close();
  }
}
