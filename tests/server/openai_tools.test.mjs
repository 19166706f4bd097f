// MiniMax tool calls and reasoning through the `openai` client, end to end: the server runs with
// --scripted-output, so each request's output is a known MiniMax-format text (the demo model is too
// small to choose tools), and everything after it is the real path: detokenizer, reasoning parser,
// tool-call parser typed by the request's schemas, OpenAI message and stream deltas.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, writeScript } from './harness.mjs';

const tools = [
  { type: 'function', function: { name: 'get_weather', description: 'Current weather', parameters: { type: 'object',
    properties: { city: { type: 'string' }, days: { type: 'integer' }, metric: { type: 'boolean' }, zip: { type: 'string' } },
    required: ['city'] } } },
  { type: 'function', function: { name: 'search', parameters: { type: 'object',
    properties: { q: { type: 'string' }, tags: { type: 'array' } } } } },
];

const TYPED = 'The user wants Paris weather.\n</think>\n\nChecking the weather.\n<minimax:tool_call>\n<invoke name="get_weather">\n'
  + '<parameter name="city">Paris</parameter>\n<parameter name="days">3</parameter>\n<parameter name="metric">true</parameter>\n'
  + '<parameter name="zip">3</parameter>\n</invoke>\n</minimax:tool_call>\nDone.';
const PARALLEL = 'Two lookups.\n</think>\n\n<minimax:tool_call>\n<invoke name="search">\n<parameter name="q">cats</parameter>\n'
  + '<parameter name="tags">["pets", 2]</parameter>\n</invoke>\n<invoke name="get_weather">\n<parameter name="city">Oslo</parameter>\n'
  + '</invoke>\n</minimax:tool_call>';
const XML_VALUE = 'Write it.\n</think>\n\n<minimax:tool_call>\n<invoke name="search">\n<parameter name="q"><p>x</parameter> y</parameter>\n'
  + '</invoke>\n</minimax:tool_call>';
const WANT_TYPED = { city: 'Paris', days: 3, metric: true, zip: '3' };
const WANT_PARALLEL = [['search', { q: 'cats', tags: ['pets', 2] }], ['get_weather', { city: 'Oslo' }]];

// The order requests are made in below: each consumes the next scripted output.
const script = [
  TYPED, TYPED,                        // non-streaming, streaming
  PARALLEL, PARALLEL, PARALLEL,        // non-streaming, streaming, parallel_tool_calls false
  XML_VALUE, XML_VALUE,                // non-streaming, streaming
  'Only thinking, then an answer.</think>\n\nThe answer is 42.',  // reasoning + content, no tools
  '<invoke name="search">\n<parameter name="q">dogs</parameter>\n</invoke>\n</minimax:tool_call>',  // tool_choice required
  '<parameter name="q">fish</parameter>\n</invoke>\n</minimax:tool_call>',                            // named tool_choice
  'No tools.</think>\n\nPlain <minimax:tool_call> text',         // tool_choice none: markup stays content
  'Reasoning cut off by max_tokens, never closed',
];

let server, client;
before(async () => {
  server = await startServer(['--scripted-output', writeScript(script), '--enable-auto-tool-choice',
    '--tool-call-parser', 'minimax_m2', '--served-model-name', 'demo']);
  client = server.client();
});
after(async () => { assert.equal(await server.stop(), 0); });

const ask = (extra = {}) => ({ model: 'demo', messages: [{ role: 'user', content: 'What is the weather in Paris?' }], tools,
  max_tokens: 200, ...extra });

// Reassembles a chat stream with the checks a streaming client relies on.
async function collect(stream) {
  let content = '', reasoning = '', finish = null;
  const calls = [];
  for await (const chunk of stream)
    for (const ch of chunk.choices) {
      const d = ch.delta;
      content += d.content ?? '';
      reasoning += d.reasoning_content ?? '';
      assert.ok(!(d.content ?? '').includes('<minimax:tool_call>') && !(d.content ?? '').includes('<invoke'), 'no markup in content');
      for (const tc of d.tool_calls ?? []) {
        if (!calls[tc.index]) {
          assert.ok(tc.id && tc.function?.name, 'a call starts with its id and name');
          assert.equal(tc.type, 'function');
          calls[tc.index] = { id: tc.id, name: tc.function.name, args: '' };
        } else {
          assert.equal(tc.id, undefined, 'the id comes once');
        }
        calls[tc.index].args += tc.function?.arguments ?? '';
      }
      if (ch.finish_reason) finish = ch.finish_reason;
    }
  return { content, reasoning, finish, calls };
}

test('typed tool call with reasoning and text around it', async () => {
  const r = await client.chat.completions.create(ask());
  const m = r.choices[0].message;
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  assert.equal(m.reasoning_content, 'The user wants Paris weather.\n');
  assert.match(m.content, /^\s*Checking the weather\.\s*Done\.$/);
  assert.equal(m.tool_calls.length, 1);
  assert.match(m.tool_calls[0].id, /^call_[0-9a-f]{24}$/);
  assert.equal(m.tool_calls[0].function.name, 'get_weather');
  assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), WANT_TYPED, 'integers and booleans typed, a string "3" stays a string');

  const s = await collect(await client.chat.completions.create(ask({ stream: true })));
  assert.equal(s.finish, 'tool_calls');
  assert.equal(s.reasoning, m.reasoning_content);
  assert.equal(s.content, m.content);
  assert.equal(s.calls.length, 1);
  assert.deepEqual(JSON.parse(s.calls[0].args), WANT_TYPED);
});

test('parallel tool calls, streamed and not, and parallel_tool_calls false', async () => {
  const r = await client.chat.completions.create(ask());
  const calls = r.choices[0].message.tool_calls;
  assert.deepEqual(calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)]), WANT_PARALLEL);
  assert.notEqual(calls[0].id, calls[1].id);
  assert.equal(r.choices[0].message.content, null);
  const s = await collect(await client.chat.completions.create(ask({ stream: true })));
  assert.deepEqual(s.calls.map((c) => [c.name, JSON.parse(c.args)]), WANT_PARALLEL);
  const one = await client.chat.completions.create(ask({ parallel_tool_calls: false }));
  assert.equal(one.choices[0].message.tool_calls.length, 1);
  assert.equal(one.choices[0].message.tool_calls[0].function.name, 'search');
});

test('a value holding </parameter> keeps it', async () => {
  const r = await client.chat.completions.create(ask());
  assert.deepEqual(JSON.parse(r.choices[0].message.tool_calls[0].function.arguments), { q: '<p>x</parameter> y' });
  const s = await collect(await client.chat.completions.create(ask({ stream: true })));
  assert.deepEqual(JSON.parse(s.calls[0].args), { q: '<p>x</parameter> y' });
});

test('reasoning then content, no tool call', async () => {
  const r = await client.chat.completions.create(ask());
  assert.equal(r.choices[0].message.reasoning_content, 'Only thinking, then an answer.');
  assert.equal(r.choices[0].message.content.trim(), 'The answer is 42.');
  assert.equal(r.choices[0].message.tool_calls, undefined);
  assert.equal(r.choices[0].finish_reason, 'stop');
});

test('tool_choice required and a named function make the model call', async () => {
  const req = await client.chat.completions.create(ask({ tool_choice: 'required' }));
  assert.equal(req.choices[0].finish_reason, 'tool_calls');
  assert.deepEqual(req.choices[0].message.tool_calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)]),
    [['search', { q: 'dogs' }]]);
  const named = await client.chat.completions.create(ask({ tool_choice: { type: 'function', function: { name: 'search' } } }));
  assert.deepEqual(named.choices[0].message.tool_calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)]),
    [['search', { q: 'fish' }]]);
});

test('tool_choice none: no parsing, markup stays content', async () => {
  const r = await client.chat.completions.create(ask({ tool_choice: 'none' }));
  assert.equal(r.choices[0].message.tool_calls, undefined);
  assert.equal(r.choices[0].message.content.trim(), 'Plain <minimax:tool_call> text');
});

test('unterminated reasoning stays reasoning; max_tokens gives finish_reason length', async () => {
  const r = await client.chat.completions.create(ask({ max_tokens: 4 }));
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.choices[0].message.content, null);
  assert.ok('Reasoning cut off by max_tokens, never closed'.startsWith(r.choices[0].message.reasoning_content));
});

test('history: assistant reasoning and tool calls and tool results are rendered back', async () => {
  const messages = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Weather in Paris?' },
    { role: 'assistant', content: null, reasoning_content: 'Need the tool.',
      tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris", "days": 2}' } }] },
    { role: 'tool', tool_call_id: 'call_1', content: 'Sunny, 21 C' },
  ];
  const tok = await (await fetch(`${server.url}/tokenize`, { method: 'POST', body: JSON.stringify({ messages, tools }) })).json();
  const text = (await (await fetch(`${server.url}/detokenize`, { method: 'POST', body: JSON.stringify({ tokens: tok.tokens }) })).json()).prompt;
  assert.ok(text.includes('<minimax:tool_call>\n<invoke name="get_weather">'), text);
  assert.ok(text.includes('<parameter name="city">Paris</parameter>'), text);
  assert.ok(!text.includes('None'), 'a null content is not rendered as None');
  assert.ok(text.includes('<parameter name="days">2</parameter>'), text);
  assert.ok(text.includes('<response>Sunny, 21 C</response>'), text);
  assert.ok(text.includes('"name": "search"'), 'tools rendered');
  // The reasoning of the last assistant turn after the user's message is rendered back.
  assert.ok(text.includes('<think>\nNeed the tool.\n</think>'), text);
  assert.equal(tok.count, tok.tokens.length);
});

test('the server said it is in scripted mode, loudly', () => {
  assert.match(server.stderr, /WARNING: SCRIPTED MODE/);
});
