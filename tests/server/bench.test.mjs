// m2 bench against m2 serve on the demo model (every mode, numbers consistent with the server's own
// counters) and against scripted HTTP servers made here (known timing; errors; a server that hangs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { spawnSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, parseMetrics, BINARY } from './harness.mjs';

const tmp = mkdtempSync(join(tmpdir(), 'm2-bench-'));

// Runs m2 bench asynchronously (the scripted servers live in this process).
function bench(args, timeoutMs = 120000) {
  return new Promise((resolve) => {
    const p = spawn(BINARY, ['bench', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }); });
  });
}

let server;
before(async () => { server = await startServer(['--served-model-name', 'demo', '--disable-log-requests']); });
after(async () => { assert.equal(await server.stop(), 0); });

test('every mode against m2 serve; the numbers agree with the server', async () => {
  const workload = join(tmp, 'workload.jsonl');
  const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { x: { type: 'string' } } } } }];
  writeFileSync(workload, [
    { messages: [{ role: 'user', content: 'Hello' }], max_tokens: 8 },
    { messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Speech?' }, { role: 'assistant', content: 'Yes.' },
      { role: 'user', content: 'More.' }], max_tokens: 6, temperature: 0.5 },
    { messages: [{ role: 'user', content: 'Tools?' }], tools, tool_choice: 'none', max_tokens: 5 },
  ].map((x) => JSON.stringify(x)).join('\n'));
  const before = await server.metrics();
  const out = join(tmp, 'run.json');
  const r = await bench([server.url, '--pp', '64', '--tg', '8', '--depth', '0,64', '--runs', '2', '--concurrency', '1,4',
    '--prompt-len', '32', '--gen-len', '8', '--json', out, '--plots', join(tmp, 'plots')]);
  assert.equal(r.code, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /\| model \| test \| t\/s \| ttfr \(ms\) \| est_ppt \(ms\) \| e2e_ttft \(ms\) \|/);
  for (const t of ['pp64', 'tg8', 'pp64 @ d64', 'tg8 @ d64']) assert.ok(r.stdout.includes(`| demo | ${t} |`), t);
  assert.match(r.stdout, /API latency: [\d.]+ ms/);
  const o = await bench([server.url, '--overhead', '5']);
  assert.equal(o.code, 0, o.stderr);
  const overhead = Number(o.stdout.match(/API overhead: (-?[\d.]+) ms per request = client e2e ([\d.]+) ms − server e2e ([\d.]+) ms/)[1]);
  assert.ok(overhead > 0 && overhead < 50, `API overhead ${overhead} ms`);
  const w = await bench([server.url, '--workload', workload]);
  assert.equal(w.code, 0, w.stderr);
  assert.match(w.stdout, /workload .* \(3 requests\)/);
  const after = await server.metrics();

  const j = JSON.parse(readFileSync(out, 'utf8'));
  assert.equal(j.meta.model, 'demo');
  const reqs = j.requests;
  assert.equal(reqs.length, 2 * 2 + 8 + 16, 'benchy: 2 cells x 2 runs; sweep: 8 + 16 requests');
  for (const q of reqs) {
    assert.equal(q.error, undefined);
    assert.ok(q.usage_reported);
    assert.ok(q.ttfr_ms <= q.ttft_ms && q.ttft_ms <= q.last_ms && q.last_ms <= q.e2e_ms, JSON.stringify(q));
    assert.equal(q.itl_ms.length, q.events - 1);
  }
  // Tokens the bench counted = tokens the server generated (its counter also holds the warm-ups,
  // the overhead requests and the workload: 2 + 2 warm-up tokens, 5 one-token requests, and 3 workload
  // requests of up to 19 tokens).
  const counted = reqs.reduce((a, q) => a + q.output_tokens, 0);
  const served = after['m2:generation_tokens_total'] - before['m2:generation_tokens_total'];
  assert.ok(served - counted >= 9 && served - counted <= 9 + 19, `bench counted ${counted}, the server generated ${served}`);
  for (const q of reqs.filter((x) => x.test.startsWith('pp'))) assert.equal(q.output_tokens, 8);
  for (const s of j.sweep) {
    assert.equal(s.errors, 0);
    assert.ok(Math.abs(s.output_tps * s.duration_s - s.output_tokens) < 1e-6 * s.output_tokens + 1e-9, 'throughput x time = tokens');
    assert.equal(s.output_tokens, 8 * s.requests);
  }
  assert.ok(existsSync(join(tmp, 'plots', 'throughput_vs_concurrency.svg')));
  assert.match(readFileSync(join(tmp, 'plots', 'ttft_vs_prompt.svg'), 'utf8'), /^<svg[\s\S]*<\/svg>\n$/);
  assert.ok(j.metrics_before.includes('m2:generation_tokens_total'));
});

// A scripted OpenAI endpoint: the first token after `ttft` ms, then one token every `itl` ms.
function scripted({ ttft = 300, itl = 40, mode = 'ok' } = {}) {
  const srv = http.createServer(async (req, res) => {
    let body = '';
    for await (const chunk of req) body += chunk;
    if (mode === 'hang') return;  // never answers
    if (req.url === '/v1/models') return res.end(JSON.stringify({ object: 'list', data: [{ id: 'scripted' }] }));
    if (req.url === '/tokenize') return res.end(JSON.stringify({ tokens: Array.from({ length: 500 }, (_, i) => i) }));
    if (req.url !== '/v1/completions') { res.writeHead(404); return res.end(); }  // no /metrics here
    if (mode === 'error') { res.writeHead(500, { 'Content-Type': 'application/json' }); return res.end('{"error": {"message": "scripted failure"}}'); }
    const n = JSON.parse(body).max_tokens;
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    await new Promise((r) => setTimeout(r, ttft));
    for (let i = 0; i < n; i++) {
      if (i) await new Promise((r) => setTimeout(r, itl));
      res.write(`data: ${JSON.stringify({ choices: [{ index: 0, text: 'x', finish_reason: i === n - 1 ? 'length' : null }] })}\n\n`);
    }
    res.write(`data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 16, completion_tokens: n, total_tokens: 16 + n } })}\n\n`);
    res.end('data: [DONE]\n\n');
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv)));
}

test('TTFT and ITL match a server with known timing', async () => {
  const srv = await scripted({ ttft: 300, itl: 40 });
  try {
    const out = join(tmp, 'scripted.json');
    const r = await bench([`http://127.0.0.1:${srv.address().port}`, '--pp', '16', '--tg', '10', '--runs', '2',
      '--latency-mode', 'none', '--concurrency', '1,4', '--prompt-len', '16', '--gen-len', '10', '--json', out]);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(readFileSync(out, 'utf8'));
    const pp = j.benchy.find((x) => x.test === 'pp16'), tg = j.benchy.find((x) => x.test === 'tg10');
    assert.ok(pp.e2e_ttft_ms >= 295 && pp.e2e_ttft_ms < 400, `TTFT ${pp.e2e_ttft_ms} ms for a scripted 300 ms`);
    assert.ok(tg.tps_mean > 20 && tg.tps_mean <= 25.5, `decode ${tg.tps_mean} tok/s for a scripted 40 ms per token`);
    for (const s of j.sweep) {
      assert.ok(s.itl_ms_p50 >= 38 && s.itl_ms_p50 < 60, `ITL p50 ${s.itl_ms_p50} ms`);
      assert.ok(s.ttft_ms_p50 >= 295 && s.ttft_ms_p50 < 400, `TTFT p50 ${s.ttft_ms_p50} ms`);
    }
  } finally {
    srv.closeAllConnections();
    srv.close();
  }
});

test('bad URLs, refused connections, failing and hanging servers: a clear message, no hang', async () => {
  let r = await bench(['ftp://example.invalid/']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /unsupported protocol|not a valid URL|cannot resolve/);
  r = await bench(['http://127.0.0.1:1']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /127\.0\.0\.1:1\/v1\/models: connection refused/);
  const failing = await scripted({ mode: 'error' });
  try {
    r = await bench([`http://127.0.0.1:${failing.address().port}`, '--concurrency', '1', '--requests', '2', '--gen-len', '4']);
    assert.equal(r.code, 1);
    assert.match(r.stdout + r.stderr, /HTTP 500: \{"error": \{"message": "scripted failure"\}\}/);
  } finally {
    failing.closeAllConnections();
    failing.close();
  }
  const hanging = await scripted({ mode: 'hang' });
  try {
    const t0 = Date.now();
    r = await bench([`http://127.0.0.1:${hanging.address().port}`, '--timeout', '2'], 60000);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /timed out/);
    assert.ok(Date.now() - t0 < 20000, 'gave up within its timeout');
  } finally {
    hanging.closeAllConnections();
    hanging.close();
  }
});
