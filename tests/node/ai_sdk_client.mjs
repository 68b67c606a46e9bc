// Drives the gateway's AI SDK routes with the real `ai` package (tests/test_ai_sdk_client.py): the
// DefaultChatTransport that useChat uses, and readUIMessageStream to build the answer as useChat does.
//
//   node tests/node/ai_sdk_client.mjs '<json: {scenario, ...}>'
//
// Scenarios:
//   turns   one user message per entry of `prompts`, each answered in turn. The first turn sends the whole
//           chat (the transport's default body); later ones only the newest message (prepareSendMessagesRequest
//           -> {id, message}), the gateway keeping the rest.
//   resume  `prompt` to `api`; the fetch is aborted after `abortAfter` text deltas, then reconnectToStream({chatId})
//           against `resumeApi` (another replica) rebuilds the whole answer; after its end a reconnect is null.
//   stop    `prompt` to `api`; after `stopAfter` text deltas DELETE <api>/<chatId>/stream, as a stop button does,
//           while reading the answer on to its end.
//
// Every chunk the gateway sends is checked against the package's own uiMessageChunkSchema, and for keys that
// schema does not name (it is strict on the wire, loose in this version: the key lists come from its source).
// Prints one JSON line on stdout; exits 1 with {"ok": false, "error": ...} on a failure or after the timeout.

import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { DefaultChatTransport, readUIMessageStream, uiMessageChunkSchema } from 'ai'

const TIMEOUT_MS = Number(process.env.AI_SDK_CLIENT_TIMEOUT_MS || 20000)
const args = JSON.parse(process.argv[2] ?? '{}')

function finish(result, code) {
  process.stdout.write(JSON.stringify(result) + '\n')
  process.exitCode = code
  setTimeout(() => process.exit(code), 50).unref()
}

const timer = setTimeout(() => finish({ ok: false, error: `timed out after ${TIMEOUT_MS} ms` }, 1), TIMEOUT_MS)

/** Each chunk type's keys, read from the schema's source in the installed package. */
function schemaKeys() {
  const entry = createRequire(import.meta.url).resolve('ai')
  const root = join(dirname(entry), '..')
  const source = readFileSync(join(root, 'src/ui-message-stream/ui-message-chunks.ts'), 'utf8')
  const union = source.slice(source.indexOf('uiMessageChunkSchema'), source.indexOf('export type DataUIMessageChunk'))
  const keys = {}
  for (const block of union.split('z.looseObject({').slice(1)) {
    const fields = [...block.matchAll(/^ {8}(\w+):/gm)].map((m) => m[1])
    const literal = /^ {8}type: z\.literal\('([\w-]+)'\)/m.exec(block) // nested objects sit deeper
    const name = literal ? literal[1] : /^ {8}type: z\.custom/m.test(block) ? 'data-*' : null
    if (name) keys[name] = new Set(fields)
  }
  return keys
}

const KEYS = schemaKeys()
const schema = uiMessageChunkSchema()

/** The SSE data payloads in `text`, as the AI SDK's parser reads them. */
function dataPayloads(text) {
  const payloads = []
  for (const frame of text.split(/\r?\n\r?\n/)) {
    const data = frame
      .split(/\r?\n/)
      .filter((line) => line.startsWith('data:'))
      .map((line) => line.slice(5).replace(/^ /, ''))
    if (data.length) payloads.push(data.join('\n'))
  }
  return payloads
}

/** A fetch that keeps a copy of every response: its status, headers and the chunks it carried, checked. */
function recordingFetch(responses) {
  return async (url, init = {}) => {
    const response = await fetch(url, init)
    const record = {
      method: init.method ?? 'GET',
      url: String(url),
      status: response.status,
      headers: Object.fromEntries(response.headers),
      body: init.body ? JSON.parse(init.body) : null,
      chunks: [],
      done: false,
      invalid: [],
    }
    responses.push(record)
    if (!response.body) return response
    const [forClient, forCheck] = response.body.tee()
    record.read = (async () => {
      let text = ''
      const decoder = new TextDecoder()
      try {
        for await (const bytes of forCheck) text += decoder.decode(bytes, { stream: true })
      } catch {
        // the client aborted: check what arrived
      }
      const whole = text.slice(0, text.lastIndexOf('\n\n') + 2)
      for (const payload of dataPayloads(whole)) {
        if (payload === '[DONE]') {
          record.done = true
          continue
        }
        const chunk = JSON.parse(payload)
        record.chunks.push(chunk)
        const checked = await schema.validate(chunk)
        if (!checked.success) record.invalid.push({ chunk, error: String(checked.error) })
        const known = KEYS[chunk.type?.startsWith('data-') ? 'data-*' : chunk.type]
        const extra = known ? Object.keys(chunk).filter((key) => key !== 'type' && !known.has(key)) : ['<type>']
        if (extra.length) record.invalid.push({ chunk, error: `keys the schema does not name: ${extra}` })
      }
    })()
    return new Response(forClient, { status: response.status, headers: response.headers })
  }
}

function userMessage(id, text) {
  return { id, role: 'user', parts: [{ type: 'text', text }] }
}

function textOf(message) {
  return (message?.parts ?? [])
    .filter((p) => p.type === 'text')
    .map((p) => p.text)
    .join('')
}

/** Read a UI message stream to its end as useChat does: the assembled message, and each text delta as it came. */
async function assemble(stream, onDelta = () => {}) {
  let message = null
  let deltas = 0
  const errors = []
  for await (const snapshot of readUIMessageStream({ stream, onError: (e) => errors.push(String(e?.message ?? e)) })) {
    message = snapshot
    const length = textOf(snapshot).length
    if (length > deltas) {
      deltas = length
      await onDelta(snapshot)
    }
  }
  return { message, errors }
}

async function turns(responses) {
  const { api, chatId, prompts, body = {} } = args
  const messages = []
  const answers = []
  for (const [i, prompt] of prompts.entries()) {
    const transport = new DefaultChatTransport({
      api,
      fetch: recordingFetch(responses),
      body,
      ...(i > 0
        ? { prepareSendMessagesRequest: ({ id, messages }) => ({ body: { ...body, id, message: messages.at(-1) } }) }
        : {}),
    })
    messages.push(userMessage(`u${i}`, prompt))
    const stream = await transport.sendMessages({
      chatId,
      messages: [...messages],
      trigger: 'submit-message',
      messageId: undefined,
      abortSignal: undefined,
    })
    const { message, errors } = await assemble(stream)
    messages.push(message)
    answers.push({ message, text: textOf(message), errors })
  }
  return { answers, messages }
}

async function resume(responses) {
  const { api, resumeApi, chatId, prompt, abortAfter } = args
  const controller = new AbortController()
  const first = new DefaultChatTransport({ api, fetch: recordingFetch(responses) })
  const stream = await first.sendMessages({
    chatId,
    messages: [userMessage('u0', prompt)],
    trigger: 'submit-message',
    messageId: undefined,
    abortSignal: controller.signal,
  })
  let seen = 0
  let partial = ''
  try {
    for await (const chunk of stream) {
      if (chunk.type === 'text-delta') {
        partial += chunk.delta
        if (++seen === abortAfter) controller.abort()
      }
    }
  } catch (error) {
    if (error?.name !== 'AbortError') throw error
  }
  const other = new DefaultChatTransport({ api: resumeApi, fetch: recordingFetch(responses) })
  const resumed = await other.reconnectToStream({ chatId })
  if (resumed === null) throw new Error('reconnectToStream found nothing running')
  const { message, errors } = await assemble(resumed)
  const afterEnd = await other.reconnectToStream({ chatId })
  return { partial, aborted: controller.signal.aborted, message, text: textOf(message), errors, afterEnd }
}

async function stop(responses) {
  const { api, chatId, prompt, stopAfter } = args
  const transport = new DefaultChatTransport({ api, fetch: recordingFetch(responses) })
  const stream = await transport.sendMessages({
    chatId,
    messages: [userMessage('u0', prompt)],
    trigger: 'submit-message',
    messageId: undefined,
    abortSignal: undefined,
  })
  let stopped = null
  let deltas = 0
  const { message, errors } = await assemble(stream, async () => {
    if (++deltas === stopAfter) {
      const response = await fetch(`${api}/${encodeURIComponent(chatId)}/stream`, { method: 'DELETE' })
      stopped = { status: response.status, body: await response.json() }
    }
  })
  return { stopped, message, text: textOf(message), errors }
}

async function main() {
  const responses = []
  const scenarios = { turns, resume, stop }
  const run = scenarios[args.scenario]
  if (!run) throw new Error(`unknown scenario ${args.scenario}; one of ${Object.keys(scenarios)}`)
  const result = await run(responses)
  await Promise.all(responses.map((r) => r.read))
  const invalid = responses.flatMap((r) => r.invalid)
  for (const r of responses) delete r.read
  return { ok: invalid.length === 0, scenario: args.scenario, ...result, responses, invalid }
}

main().then(
  (result) => {
    clearTimeout(timer)
    finish(result, result.ok ? 0 : 1)
  },
  (error) => {
    clearTimeout(timer)
    finish({ ok: false, error: `${error?.name}: ${error?.message}`, stack: error?.stack }, 1)
  },
)
