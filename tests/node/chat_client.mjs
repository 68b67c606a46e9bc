// Drives the gateway's POST /chat with the real @tanstack/ai-client (tests/test_tanstack_client.py).
//
//   node tests/node/chat_client.mjs <base-url> <scenario> <prompt> [tool-output]
//
// Scenarios:
//   text  one user message; the assistant's text answer.
//   tool  the same with a client tool (named by the prompt's [emu:tool=NAME]) that the client runs itself
//         and answers with <tool-output>; the client then continues on its own with a second run.
//   cut   like text; the caller points <base-url> at a proxy that cuts the first connection mid-stream,
//         and the client must resume by itself.
//   join  like text; while the run is still generating, a second, fresh ChatClient re-attaches to it
//         through its connection's joinRun (GET /chat?offset=-1&runId=…), as after a page reload.
//
// Prints one JSON line on stdout (what the client saw) and exits 0; exits 1 with {"ok":false,"error":…}
// on a failure or after the overall timeout.

import { ChatClient, fetchServerSentEvents } from '@tanstack/ai-client'
import { toolDefinition } from '@tanstack/ai'

const TIMEOUT_MS = Number(process.env.CHAT_CLIENT_TIMEOUT_MS || 20000)
const [baseUrl, scenario, prompt, toolOutput = 'tool says hello'] = process.argv.slice(2)

function finish(result, code) {
  process.stdout.write(JSON.stringify(result) + '\n')
  process.exitCode = code
  // Let stdout drain, then leave even if a socket is still open.
  setTimeout(() => process.exit(code), 50).unref()
}

const timer = setTimeout(() => {
  finish({ ok: false, scenario, error: `timed out after ${TIMEOUT_MS} ms` }, 1)
}, TIMEOUT_MS)

/** A fetch that records every request the client makes (method, URL, resume headers) and passes it on. */
function recordingFetch(requests) {
  return async (url, init = {}) => {
    const headers = new Headers(init.headers)
    let runId = null
    if (typeof init.body === 'string') {
      try {
        runId = JSON.parse(init.body).runId ?? null
      } catch {
        runId = null
      }
    }
    requests.push({
      method: init.method ?? 'GET',
      url: String(url),
      runId,
      xRunId: headers.get('x-run-id'),
      lastEventId: headers.get('last-event-id'),
    })
    return fetch(url, init)
  }
}

function describeMessages(messages) {
  return messages.map((m) => ({
    id: m.id,
    role: m.role,
    parts: m.parts.map((p) => {
      switch (p.type) {
        case 'text':
          return { type: 'text', content: p.content }
        case 'tool-call':
          return {
            type: 'tool-call',
            id: p.id,
            name: p.name,
            arguments: p.arguments,
            input: p.input ?? null,
            state: p.state,
            output: p.output ?? null,
          }
        case 'tool-result':
          return { type: 'tool-result', toolCallId: p.toolCallId, content: p.content, state: p.state }
        default:
          return { type: p.type }
      }
    }),
  }))
}

/** Text of the assistant messages: one string per assistant message, its text parts joined. */
function assistantTexts(messages) {
  return messages
    .filter((m) => m.role === 'assistant')
    .map((m) =>
      m.parts
        .filter((p) => p.type === 'text')
        .map((p) => p.content)
        .join(''),
    )
}

function toolName(text) {
  const match = /\[emu:tool=([^\]]+)\]/.exec(text)
  return match ? match[1] : null
}

/** Resolve once the client is idle (not loading) and has stayed so for a moment (tool continuations). */
async function settled(client) {
  let quietSince = null
  for (;;) {
    const idle = !client.getIsLoading() && client.getStatus() !== 'submitted' && client.getStatus() !== 'streaming'
    if (!idle) quietSince = null
    else if (quietSince === null) quietSince = Date.now()
    else if (Date.now() - quietSince >= 150) return
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

function newClient({ requests, chunks, errors, tools, extra = {} }) {
  return new ChatClient({
    connection: fetchServerSentEvents(`${baseUrl}/chat`, {
      fetchClient: recordingFetch(requests),
      // Defaults (5 attempts, 250 ms) made explicit: the test relies on them.
      reconnect: { maxAttempts: 5, delayMs: 250 },
    }),
    ...(tools ? { tools } : {}),
    onChunk: (chunk) => {
      chunks.push(chunk)
    },
    onError: (error) => {
      errors.push(`${error.name}: ${error.message}`)
    },
    ...extra,
  })
}

function summarize(client, { requests, chunks, errors }, extra = {}) {
  const messages = client.getMessages()
  const posts = requests.filter((r) => r.method === 'POST')
  const types = {}
  for (const chunk of chunks) types[chunk.type] = (types[chunk.type] ?? 0) + 1
  return {
    ok: errors.length === 0 && client.getStatus() !== 'error',
    scenario,
    prompt,
    status: client.getStatus(),
    error: client.getError() ? String(client.getError().message) : null,
    errors,
    texts: assistantTexts(messages),
    messages: describeMessages(messages),
    requests,
    // A POST carrying Last-Event-ID is the client's own resume of a run it already started.
    reconnects: posts.filter((r) => r.lastEventId !== null).length,
    runIds: [...new Set(posts.map((r) => r.runId))],
    deltas: chunks.filter((c) => c.type === 'TEXT_MESSAGE_CONTENT').map((c) => c.delta),
    chunkTypes: types,
    finishReasons: chunks
      .filter((c) => c.type === 'RUN_FINISHED')
      .map((c) => c.finishReason ?? c.metadata?.tanstack?.finishReason ?? null),
    ...extra,
  }
}

async function main() {
  if (!baseUrl || !['text', 'tool', 'cut', 'join'].includes(scenario) || !prompt) {
    throw new Error('usage: chat_client.mjs <base-url> text|tool|cut|join <prompt> [tool-output]')
  }
  const record = { requests: [], chunks: [], errors: [] }
  const toolCalls = []
  let tools
  if (scenario === 'tool') {
    const name = toolName(prompt)
    if (!name) throw new Error('the tool scenario needs [emu:tool=NAME] in the prompt')
    const tool = toolDefinition({
      name,
      description: 'A client tool the test runs in Node',
      inputSchema: { type: 'object', properties: { query: { type: 'string' } }, required: ['query'] },
    }).client(async (input, { toolCallId }) => {
      toolCalls.push({ toolCallId, input })
      return toolOutput
    })
    tools = [tool]
  }
  const client = newClient({ ...record, tools })
  const sending = client.sendMessage(prompt)
  let joined = null
  if (scenario === 'join') {
    // A second, fresh ChatClient, as after a page reload or on another device: it knows only the run id
    // and re-attaches on attach() through the connection's joinRun, while the run is still generating.
    const deadline = Date.now() + 5000
    while (record.chunks.filter((c) => c.type === 'TEXT_MESSAGE_CONTENT').length < 2) {
      if (Date.now() > deadline) throw new Error('the first client saw no text to join')
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    const runId = record.requests[0].runId
    const rejoin = { requests: [], chunks: [], errors: [] }
    const second = newClient({
      ...rejoin,
      extra: { initialResumeSnapshot: { resumeState: { threadId: 'rejoin-thread', runId } } },
    })
    second.attach()
    joined = { client: second, record: rejoin }
  }
  await sending
  await settled(client)
  const result = summarize(client, record, { toolExecutions: toolCalls })
  if (joined) {
    while (joined.record.requests.length === 0) await new Promise((resolve) => setTimeout(resolve, 10))
    await settled(joined.client)
    result.joined = summarize(joined.client, joined.record)
    result.ok = result.ok && result.joined.ok
    joined.client.dispose()
  }
  client.dispose()
  return result
}

main().then(
  (result) => {
    clearTimeout(timer)
    finish(result, result.ok ? 0 : 1)
  },
  (error) => {
    clearTimeout(timer)
    finish({ ok: false, scenario, error: `${error?.name}: ${error?.message}`, stack: error?.stack }, 1)
  },
)
