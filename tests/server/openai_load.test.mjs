// Load: 64 concurrent streaming clients with fixed seeds get what each gets alone; shared prefixes
// hit the prefix cache; a KV budget too small for everyone queues and preempts but finishes every
// request; clients that disconnect mid-stream leave the KV pool and the RSS at idle.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, sameUpToNearTie, sleep, DEMO } from './harness.mjs';

const prose = readFileSync(join(DEMO, 'eval-text', 'test-prose.txt'), 'utf8');
const words = prose.split(/\s+/);
const passage = (at, n) => words.slice(at, at + n).join(' ');

let server, client;
before(async () => {
  server = await startServer(['--served-model-name', 'demo', '--debug-decision-margins', '--max-num-seqs', '64',
    '--max-num-batched-tokens', '256', '--disable-log-requests']);
  client = server.client();
});
after(async () => { assert.equal(await server.stop(), 0); });

// Streams one completion; returns its tokens (from logprobs), text and decision margins.
async function streamed(c, body, { abortAfter } = {}) {
  const controller = new AbortController();
  const stream = await c.completions.create({ ...body, stream: true, logprobs: 0 }, { signal: controller.signal });
  const out = { tokens: [], text: '', margins: null, finish: null, chunks: 0 };
  try {
    for await (const chunk of stream) {
      const ch = chunk.choices[0];
      if (!ch) continue;
      out.chunks++;
      out.text += ch.text;
      out.tokens.push(...(ch.logprobs?.tokens ?? []));
      if (ch.finish_reason) { out.finish = ch.finish_reason; out.margins = ch.m2_decision_margins; }
      if (abortAfter && out.chunks >= abortAfter) { controller.abort(); break; }
    }
  } catch (e) {
    if (!abortAfter) throw e;
  }
  return out;
}

const requestFor = (i) => ({
  model: 'demo', prompt: passage(i * 37, 5 + ((i * 13) % 60)), max_tokens: 16, ignore_eos: true, seed: 1000 + i,
  temperature: [0, 0.7, 1.0, 0.9][i % 4], top_p: i % 4 === 2 ? 0.9 : 1, top_k: i % 4 === 3 ? 40 : -1,
});

test('64 concurrent streaming clients with fixed seeds get what each gets alone', async () => {
  const alone = [];
  for (let i = 0; i < 64; i++) alone.push(await streamed(client, requestFor(i)));
  const together = await Promise.all(Array.from({ length: 64 }, (_, i) => streamed(server.client(), requestFor(i))));
  let nearTies = 0;
  for (let i = 0; i < 64; i++) {
    assert.equal(together[i].finish, 'length');
    assert.equal(together[i].tokens.length, 16);
    assert.equal(together[i].tokens.join(''), together[i].text);
    if (sameUpToNearTie(together[i].tokens, alone[i].tokens, together[i].margins, alone[i].margins, `client ${i}`) === 'near-tie')
      nearTies++;
  }
  assert.ok(nearTies <= 2, `${nearTies} near-ties`);
  const m = await server.metrics();
  assert.equal(m['m2:kv_cache_blocks_used'], 0);
  assert.equal(m['m2:num_requests_running'], 0);
});

test('prompts sharing a prefix hit the prefix cache', async () => {
  const before = await server.metrics();
  const prefix = passage(5000, 220);
  await client.completions.create({ model: 'demo', prompt: prefix + ' One.', max_tokens: 2 });
  await Promise.all(['Two.', 'Three.', 'Four.', 'Five.'].map((s) => client.completions.create({ model: 'demo', prompt: `${prefix} ${s}`, max_tokens: 2 })));
  const m = await server.metrics();
  const hits = m['m2:prefix_cache_hits_total'] - before['m2:prefix_cache_hits_total'];
  assert.ok(hits >= 4 * 160, `${hits} prompt tokens from the cache`);
  assert.ok(m['m2:prefix_cache_hit_rate'] > 0);
  const r = await client.completions.create({ model: 'demo', prompt: prefix + ' Six.', max_tokens: 1 });
  assert.ok(r.usage.prompt_tokens_details.cached_tokens >= 160, 'usage reports the cached tokens');
});

test('16 clients disconnecting mid-stream leave the KV pool and RSS at idle', async () => {
  const long = (i) => ({ model: 'demo', prompt: passage(i * 100, 40), max_tokens: 3000, ignore_eos: true });
  // A first round that finishes normally, so that the idle RSS includes what serving allocates.
  await Promise.all(Array.from({ length: 16 }, (_, i) => client.completions.create({ ...long(i), max_tokens: 200 })));
  await sleep(200);
  const idle = server.rssKiB();
  for (let round = 0; round < 2; round++) {
    const results = await Promise.all(Array.from({ length: 16 }, (_, i) => streamed(server.client(), long(i), { abortAfter: 5 + i })));
    for (const r of results) assert.ok(r.chunks >= 5 && r.finish === null, 'disconnected before the end');
    let m;
    for (let t = 0; t < 100; t++) {  // the server notices at its next write
      m = await server.metrics();
      if (m['m2:num_requests_running'] === 0 && m['m2:kv_cache_blocks_used'] === 0) break;
      await sleep(50);
    }
    assert.equal(m['m2:num_requests_running'], 0, 'every disconnected request was cancelled');
    assert.equal(m['m2:kv_cache_blocks_used'], 0, 'and its KV blocks freed');
    assert.ok(m['m2:generation_tokens_total'] < 16 * 200 + 64 * 16 + 100 + 16 * 3000 * (round + 1) / 4,
      'cancelled requests stopped generating');
  }
  const after = server.rssKiB();
  assert.ok(after - idle < 16 * 1024, `RSS grew from ${idle} KiB to ${after} KiB`);
  const m = await server.metrics();
  assert.ok(m['m2:request_success_total{model_name="demo",finished_reason="abort"}'] >= 32);
});

test('a KV budget too small for all requests queues and preempts, and every request finishes', async () => {
  // 20 blocks of 16 tokens (2 KiB per token at fp32) for 16 requests of up to 210 tokens each.
  const small = await startServer(['--served-model-name', 'demo', '--max-model-len', '256', '--kv-cache-memory', '640KiB',
    '--disable-log-requests']);
  try {
    const c = small.client();
    const results = await Promise.all(Array.from({ length: 16 }, (_, i) =>
      c.completions.create({ model: 'demo', prompt: passage(i * 50, 60), max_tokens: 120, ignore_eos: true, temperature: 0 })));
    for (const r of results) {
      assert.equal(r.choices[0].finish_reason, 'length');
      assert.equal(r.usage.completion_tokens, 120);
    }
    const m = await small.metrics();
    assert.ok(m['m2:num_preemptions_total'] > 0, 'blocks ran out and requests were preempted');
    assert.equal(m['m2:kv_cache_blocks_used'], 0);
  } finally {
    assert.equal(await small.stop(), 0);
  }
});
