// Starts the real `m2 serve` binary on a free loopback port, and helpers the server tests share.
// M2_BINARY and M2_DEMO_MODEL come from ctest (tests/CMakeLists.txt).
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';

export const BINARY = process.env.M2_BINARY;
export const DEMO = process.env.M2_DEMO_MODEL;
if (!BINARY || !DEMO) throw new Error('M2_BINARY and M2_DEMO_MODEL must be set (run through ctest)');

// M2_LAUNCHER (e.g. "mpirun --oversubscribe -np 2") and M2_SERVE_ARGS (e.g. "--tensor-parallel-size 2")
// run every server test of a file against a distributed job (tests/CMakeLists.txt, *Tp2 tests).
const LAUNCHER = (process.env.M2_LAUNCHER ?? '').split(' ').filter(Boolean);
const SERVE_ARGS = (process.env.M2_SERVE_ARGS ?? '').split(' ').filter(Boolean);

// Starts `m2 serve MODEL --port 0 ...args`; resolves once it prints the address it listens on.
export async function startServer(args = [], { model = DEMO, launcher = LAUNCHER, serveArgs = SERVE_ARGS } = {}) {
  const argv = [...launcher, BINARY, 'serve', model, '--port', '0', ...serveArgs, ...args];
  const proc = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d.toString(); });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`m2 serve did not start in 60 s:\n${stderr}`)), 60000);
    proc.stdout.on('data', (d) => {
      out += d.toString();
      const m = out.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`m2 serve exited with ${code}:\n${stderr}`)); });
    proc.on('error', (e) => { clearTimeout(timer); reject(new Error(`cannot start ${BINARY}: ${e.message}`)); });
  });
  const url = `http://127.0.0.1:${port}`;
  const server = {
    proc, port, url,
    get stderr() { return stderr; },
    client(opts = {}) { return new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0, timeout: 120000, ...opts }); },
    // SIGTERM; resolves with the exit code. Under a launcher the signal goes to rank 0 (the server),
    // which drains its requests and ends the other ranks; mpirun then exits with their code.
    stop() {
      return new Promise((resolve) => {
        if (proc.exitCode !== null) return resolve(proc.exitCode);
        proc.once('exit', (code) => resolve(code));
        if (launcher.length) process.kill(server.rankPid(0), 'SIGTERM');
        else proc.kill('SIGTERM');
      });
    },
    // The pid of a rank of a distributed job (each rank prints "m2: rank R: ... (pid P on HOST)").
    rankPid(rank) {
      const m = stderr.match(new RegExp(`m2: rank ${rank}: .*\\(pid (\\d+) on`));
      if (!m) throw new Error(`no rank ${rank} in the server's log:\n${stderr}`);
      return Number(m[1]);
    },
    rssKiB() {
      const status = readFileSync(`/proc/${proc.pid}/status`, 'utf8');
      return Number(status.match(/VmRSS:\s+(\d+) kB/)[1]);
    },
    async metrics() { return parseMetrics(await (await fetch(`${url}/metrics`)).text()); },
  };
  return server;
}

// Prometheus text → { 'name{labels}': value, name: value (first sample) }.
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$/);
    if (!m) throw new Error(`not a Prometheus sample line: ${line}`);
    const value = Number(m[3]);
    out[m[1] + (m[2] ?? '')] = value;
    if (!(m[1] in out)) out[m[1]] = value;
  }
  return out;
}

// A JSONL script for --scripted-output (one JSON string per line).
export function writeScript(outputs) {
  const dir = mkdtempSync(join(tmpdir(), 'm2-script-'));
  const file = join(dir, 'script.jsonl');
  writeFileSync(file, outputs.map((s) => JSON.stringify(s)).join('\n') + '\n');
  return file;
}

// Same tokens as `want`, or a first difference at a decision that was a near-tie in either run (a
// different batch composition sums in another order; see tests/runtime/engine_harness.h).
export function sameUpToNearTie(got, want, gotMargins, wantMargins, what) {
  const n = Math.min(got.length, want.length);
  for (let i = 0; i < n; i++) {
    if (got[i] === want[i]) continue;
    const m = Math.min(gotMargins?.[i] ?? 0, wantMargins?.[i] ?? 0);
    if (m < 1e-3) return 'near-tie';
    throw new Error(`${what}: token ${i} differs (${JSON.stringify(got[i])} vs ${JSON.stringify(want[i])}), decision margin ${m}`);
  }
  if (got.length !== want.length) throw new Error(`${what}: ${got.length} tokens, expected ${want.length}`);
  return 'same';
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
