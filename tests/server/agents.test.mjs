// The agent APIs through their official clients: Anthropic Messages (@anthropic-ai/sdk) and OpenAI
// Responses (openai), with --scripted-output driving tool calls and thinking; a recorded
// Claude-Code-style request; errors in each API's shape.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import Anthropic from '@anthropic-ai/sdk';
import { startServer, writeScript } from './harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const claudeCode = JSON.parse(readFileSync(join(here, '..', 'data', 'agent', 'claude_code_request.json'), 'utf8'));

const WEATHER_CALL = 'Need the weather tool.\n</think>\n\nChecking.\n<minimax:tool_call>\n<invoke name="get_weather">\n'
  + '<parameter name="city">Paris</parameter>\n<parameter name="days">2</parameter>\n</invoke>\n</minimax:tool_call>';
const TWO_CALLS = 'Two at once.\n</think>\n\n<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Oslo</parameter>\n'
  + '</invoke>\n<invoke name="get_time">\n<parameter name="zone">CET</parameter>\n</invoke>\n</minimax:tool_call>';
const ANSWER = 'The tool said sunny.\n</think>\n\nIt is sunny in Paris, 21 C.';

// One scripted output per request, in the order the tests below make them.
const script = [
  'Greeting.\n</think>\n\nHello there!',                 // anthropic: plain
  'Greeting.\n</think>\n\nHello there!',                 // anthropic: streamed
  WEATHER_CALL, ANSWER,                                  // anthropic: tool loop
  TWO_CALLS,                                             // anthropic: parallel calls
  'Hidden thoughts.\n</think>\n\nVisible answer.',      // anthropic: thinking disabled
  'Think.\n</think>\n\nOne two STOP three four',         // anthropic: stop sequence
  'Thinking about code.\n</think>\n\nI will fix median.',  // claude code turn 1
  'Second turn.\n</think>\n\nDone.',                     // claude code turn 2
  'Hi.\n</think>\n\nResponses say hello.',                // responses: plain
  'Hi.\n</think>\n\nResponses say hello.',                // responses: streamed
  WEATHER_CALL, ANSWER,                                  // responses: function call loop
  WEATHER_CALL,                                          // responses: streamed function call
  'Short.\n</think>\n\nWith instructions.',               // responses: instructions
];

const weatherTool = { name: 'get_weather', description: 'Weather for a city', input_schema: { type: 'object',
  properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city'] } };
const timeTool = { name: 'get_time', input_schema: { type: 'object', properties: { zone: { type: 'string' } } } };

let server, anthropic, openai;
before(async () => {
  server = await startServer(['--scripted-output', writeScript(script), '--enable-auto-tool-choice', '--tool-call-parser',
    'minimax_m2', '--served-model-name', 'demo', 'claude-sonnet-4-5']);
  anthropic = new Anthropic({ baseURL: server.url, apiKey: 'none', maxRetries: 0 });
  openai = server.client();
});
after(async () => { assert.equal(await server.stop(), 0); });

const ask = (extra = {}) => ({ model: 'demo', max_tokens: 200, messages: [{ role: 'user', content: 'Hi' }], ...extra });

test('anthropic: a plain turn, and the same turn streamed through messages.stream().finalMessage()', async () => {
  const m = await anthropic.messages.create(ask({ thinking: { type: 'enabled', budget_tokens: 1024 } }));
  assert.equal(m.type, 'message');
  assert.equal(m.role, 'assistant');
  assert.match(m.id, /^msg_/);
  assert.deepEqual(m.content.map((b) => b.type), ['thinking', 'text']);
  assert.equal(m.content[0].thinking, 'Greeting.\n');
  assert.equal(m.content[1].text, 'Hello there!');
  assert.equal(m.stop_reason, 'end_turn');
  assert.ok(m.usage.input_tokens + m.usage.cache_read_input_tokens > 10 && m.usage.output_tokens > 3);
  const events = [];
  const stream = anthropic.messages.stream(ask({ thinking: { type: 'enabled', budget_tokens: 1024 } }));
  stream.on('streamEvent', (e) => events.push(e.type));
  const f = await stream.finalMessage();
  assert.deepEqual(f.content, m.content);
  assert.equal(f.stop_reason, 'end_turn');
  assert.equal(f.usage.output_tokens, m.usage.output_tokens);
  assert.equal(events[0], 'message_start');
  assert.deepEqual(events.slice(-2), ['message_delta', 'message_stop']);
  assert.ok(events.filter((e) => e === 'content_block_start').length === 2 && events.filter((e) => e === 'content_block_stop').length === 2);
});

test('anthropic: a multi-turn tool loop, tool_use → tool_result → answer', async () => {
  const first = await anthropic.messages.create(ask({ tools: [weatherTool], messages: [{ role: 'user', content: 'Weather in Paris?' }],
    thinking: { type: 'enabled', budget_tokens: 1024 } }));
  assert.equal(first.stop_reason, 'tool_use');
  const use = first.content.find((b) => b.type === 'tool_use');
  assert.match(use.id, /^toolu_[0-9a-f]{24}$/);
  assert.equal(use.name, 'get_weather');
  assert.deepEqual(use.input, { city: 'Paris', days: 2 }, 'typed from input_schema');
  assert.deepEqual(first.content.map((b) => b.type), ['thinking', 'text', 'tool_use']);
  const second = await anthropic.messages.create(ask({ tools: [weatherTool], thinking: { type: 'enabled', budget_tokens: 1024 },
    messages: [{ role: 'user', content: 'Weather in Paris?' }, { role: 'assistant', content: first.content },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: 'sunny, 21 C' }] }] }));
  assert.equal(second.stop_reason, 'end_turn');
  assert.equal(second.content.at(-1).text, 'It is sunny in Paris, 21 C.');
  assert.ok(second.usage.cache_read_input_tokens > 0, 'the second turn reuses the first turn\'s prefix');
});

test('anthropic: parallel tool calls, streamed', async () => {
  const f = await anthropic.messages.stream(ask({ tools: [weatherTool, timeTool] })).finalMessage();
  assert.equal(f.stop_reason, 'tool_use');
  assert.deepEqual(f.content.filter((b) => b.type === 'tool_use').map((b) => [b.name, b.input]),
    [['get_weather', { city: 'Oslo' }], ['get_time', { zone: 'CET' }]]);
  assert.ok(!f.content.some((b) => b.type === 'thinking'), 'thinking not asked for: not returned');
});

test('anthropic: thinking disabled hides reasoning; stop sequences', async () => {
  const m = await anthropic.messages.create(ask({ thinking: { type: 'disabled' } }));
  assert.deepEqual(m.content, [{ type: 'text', text: 'Visible answer.' }]);
  const s = await anthropic.messages.create(ask({ stop_sequences: ['STOP'] }));
  assert.equal(s.stop_reason, 'stop_sequence');
  assert.equal(s.stop_sequence, 'STOP');
  assert.equal(s.content.at(-1).text, 'One two ');
});

test('anthropic: count_tokens equals the prompt the template renders', async () => {
  const body = ask({ system: [{ type: 'text', text: 'Be brief.' }], tools: [weatherTool], messages: [{ role: 'user', content: 'Weather?' }] });
  const { max_tokens, ...countBody } = body;
  const n = await anthropic.messages.countTokens(countBody);
  const tok = await (await fetch(`${server.url}/tokenize`, { method: 'POST', body: JSON.stringify({ messages: [
    { role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Weather?' }],
  tools: [{ type: 'function', function: { name: 'get_weather', description: 'Weather for a city', parameters: weatherTool.input_schema } }] }) })).json();
  assert.equal(n.input_tokens, tok.count);
});

test('a recorded Claude-Code-style request is answered, and its second turn hits the prefix cache', async () => {
  const body = { ...claudeCode, model: 'claude-sonnet-4-5' };
  const before = await server.metrics();
  const first = await anthropic.messages.stream(body).finalMessage();
  assert.equal(first.stop_reason, 'end_turn');
  assert.equal(first.content.at(-1).text, 'I will fix median.');
  assert.equal(first.content[0].type, 'thinking');
  const second = await anthropic.messages.stream({ ...body, messages: [...body.messages,
    { role: 'assistant', content: first.content }, { role: 'user', content: 'Thanks.' }] }).finalMessage();
  assert.equal(second.content.at(-1).text, 'Done.');
  const prompt1 = first.usage.input_tokens + first.usage.cache_read_input_tokens;
  assert.ok(prompt1 > 1000, `the request is long (${prompt1} tokens)`);
  assert.ok(second.usage.cache_read_input_tokens >= prompt1 - 32, `second turn: ${second.usage.cache_read_input_tokens} cached of ${prompt1}`);
  const m = await server.metrics();
  assert.ok(m['m2:prefix_cache_hits_total'] - before['m2:prefix_cache_hits_total'] >= prompt1 - 32);
});

test('anthropic errors come in its shape, with the SDK error classes', async () => {
  await assert.rejects(anthropic.messages.create({ model: 'demo', messages: [{ role: 'user', content: 'x' }] }), (e) => {
    assert.ok(e instanceof Anthropic.BadRequestError);
    assert.equal(e.error.type, 'error');
    assert.equal(e.error.error.type, 'invalid_request_error');
    assert.match(e.error.error.message, /'max_tokens' is required/);
    return true;
  });
  await assert.rejects(anthropic.messages.create(ask({ model: 'claude-opus-9' })), (e) => e instanceof Anthropic.NotFoundError);
  await assert.rejects(anthropic.messages.create(ask({ messages: [{ role: 'user', content: [{ type: 'image', source: {} }] }] })),
    (e) => e instanceof Anthropic.BadRequestError && /'messages\[0\]\.content\[0\]\.type' = 'image'/.test(e.message));
  await assert.rejects(anthropic.messages.create(ask({ tool_choice: { type: 'tool', name: 'nope' }, tools: [weatherTool] })),
    (e) => e instanceof Anthropic.BadRequestError && /names 'nope'/.test(e.message));
  const raw = await fetch(`${server.url}/v1/messages`, { method: 'POST', body: '{"oops', headers: { 'Content-Type': 'application/json' } });
  assert.equal(raw.status, 400);
  const j = await raw.json();
  assert.equal(j.type, 'error');
  assert.equal(j.error.type, 'invalid_request_error');
  const big = await fetch(`${server.url}/v1/messages`, { method: 'POST', body: 'x'.repeat(40 << 20), headers: { 'Content-Type': 'application/json' } });
  assert.equal(big.status, 413);
  assert.equal((await big.json()).error.type, 'request_too_large');
});

test('responses: plain, and streamed through responses.stream().finalResponse()', async () => {
  const r = await openai.responses.create({ model: 'demo', input: 'Hi', reasoning: { summary: 'auto' } });
  assert.equal(r.object, 'response');
  assert.equal(r.status, 'completed');
  assert.equal(r.output_text, 'Responses say hello.');
  assert.deepEqual(r.output.map((o) => o.type), ['reasoning', 'message']);
  assert.equal(r.output[0].summary[0].text, 'Hi.\n');
  assert.ok(r.usage.input_tokens > 5 && r.usage.output_tokens > 3);
  const events = [];
  const stream = openai.responses.stream({ model: 'demo', input: 'Hi', reasoning: { summary: 'auto' } });
  stream.on('event', (e) => events.push(e.type));
  const f = await stream.finalResponse();
  assert.equal(f.output_text, r.output_text);
  assert.deepEqual(f.output.map((o) => o.type), ['reasoning', 'message']);
  assert.equal(events[0], 'response.created');
  assert.equal(events.at(-1), 'response.completed');
  for (const t of ['response.output_item.added', 'response.output_text.delta', 'response.output_text.done', 'response.output_item.done'])
    assert.ok(events.includes(t), t);
});

test('responses: a function call, its output, the answer; and a streamed call', async () => {
  const tools = [{ type: 'function', name: 'get_weather', parameters: weatherTool.input_schema }];
  const r1 = await openai.responses.create({ model: 'demo', input: 'Weather in Paris?', tools });
  const call = r1.output.find((o) => o.type === 'function_call');
  assert.equal(call.name, 'get_weather');
  assert.deepEqual(JSON.parse(call.arguments), { city: 'Paris', days: 2 });
  assert.match(call.call_id, /^call_/);
  const r2 = await openai.responses.create({ model: 'demo', tools, input: [
    { role: 'user', content: 'Weather in Paris?' }, ...r1.output,
    { type: 'function_call_output', call_id: call.call_id, output: 'sunny, 21 C' }] });
  assert.equal(r2.output_text, 'It is sunny in Paris, 21 C.');
  assert.ok(r2.usage.input_tokens_details.cached_tokens > 0);
  const args = [];
  const stream = openai.responses.stream({ model: 'demo', input: 'Weather in Paris?', tools });
  stream.on('response.function_call_arguments.delta', (e) => args.push(e.delta));
  const f = await stream.finalResponse();
  const fc = f.output.find((o) => o.type === 'function_call');
  assert.deepEqual(JSON.parse(fc.arguments), { city: 'Paris', days: 2 });
  assert.equal(args.join(''), fc.arguments);
});

test('responses: instructions are rendered; stateful features are refused', async () => {
  const plain = await openai.responses.create({ model: 'demo', input: 'Hi', instructions: 'Answer in exactly three words, always.' });
  assert.equal(plain.output_text, 'With instructions.');
  assert.equal(plain.instructions, 'Answer in exactly three words, always.');
  await assert.rejects(openai.responses.create({ model: 'demo', input: 'Hi', previous_response_id: 'resp_1' }),
    (e) => e.status === 400 && /previous_response_id/.test(e.message));
  await assert.rejects(openai.responses.create({ model: 'demo', input: [{ type: 'item_reference', id: 'x' }] }),
    (e) => e.status === 400 && /item references need stored responses/.test(e.message));
});
