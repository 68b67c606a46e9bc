// The playground (API.md §4): one answer streamed over EventSource in a chosen dialect, one Trellis task watched
// over a WebSocket. Nothing the server sends becomes markup: text goes in with textContent and Text nodes.
'use strict';

const $ = (id) => document.getElementById(id);
const json = JSON.parse;

// What each dialect's frames mean (API.md §3): text to append, the end, or an error's type; null for the rest.
// `events` names every SSE event the dialect sends (an unnamed frame is `message`): EventSource shows a frame
// only to a listener of its name, and each one's id must be seen to know the last id the browser had.
const DIALECTS = {
  native: {
    events: ['start', 'chunk', 'tool_call', 'usage', 'complete', 'error'],
    frame(name, data) {
      if (name === 'chunk') return { text: json(data).chunk };
      if (name === 'complete') return { done: true };
      return name === 'error' ? { error: json(data).type } : null;
    },
  },
  text: {
    events: ['message', 'error'],
    frame(name, data) {
      if (name === 'error') return { error: json(data).type };
      return data === '[DONE]' ? { done: true } : { text: data };
    },
  },
  status: {
    events: ['message'],
    frame(name, data) {
      const m = json(data);
      if (m.status === 'streaming') return { text: m.chunk };
      if (m.status === 'completed') return { done: true };
      return m.status === 'error' ? { error: m.type } : null;
    },
  },
  openai: {
    events: ['message'],
    frame(name, data) {
      if (data === '[DONE]') return { done: true };
      const m = json(data);
      if (m.error) return { error: m.error.code || m.error.type };
      const content = m.choices && m.choices.length ? m.choices[0].delta.content : null;
      return content ? { text: content } : null;
    },
  },
  anthropic: {
    events: ['message_start', 'content_block_start', 'content_block_delta', 'content_block_stop', 'message_delta',
      'message_stop', 'ping', 'error'],
    frame(name, data) {
      if (name === 'message_stop') return { done: true };
      if (name === 'error') return { error: json(data).error.type };
      const m = json(data);
      return name === 'content_block_delta' && m.delta.type === 'text_delta' ? { text: m.delta.text } : null;
    },
  },
  agui: {
    events: ['message'],
    frame(name, data) {
      const m = json(data);
      if (m.type === 'TEXT_MESSAGE_CONTENT') return { text: m.delta };
      if (m.type === 'RUN_FINISHED') return { done: true };
      return m.type === 'RUN_ERROR' ? { error: m.code } : null;
    },
  },
  tanstack: {
    events: ['message'],
    frame(name, data) {
      if (data === '[DONE]') return null; // after `done` or `error`, which end the answer
      const m = json(data);
      if (m.type === 'content') return { text: m.delta };
      if (m.type === 'done') return { done: true };
      return m.type === 'error' ? { error: m.error.code } : null;
    },
  },
  ui: {
    events: ['message'],
    frame(name, data) {
      if (data === '[DONE]') return null; // after `finish`, `data-error` or `abort`
      const m = json(data);
      if (m.type === 'text-delta') return { text: m.delta };
      if (m.type === 'finish') return { done: true };
      if (m.type === 'abort') return { error: 'cancelled' };
      return m.type === 'data-error' ? { error: m.data.type } : null;
    },
  },
};

const key = () => $('api-key').value.trim();

function headers(extra = {}) {
  return key() ? { ...extra, 'X-API-Key': key() } : extra;
}

async function post(path, body) {
  const response = await fetch(path, {
    method: 'POST',
    headers: headers({ 'Content-Type': 'application/json' }),
    body: JSON.stringify(body),
  });
  return { response, body: await response.json().catch(() => ({})) };
}

// --- the answer ---

const answer = { taskId: null, format: 'native', lastId: null, source: null };

function setState(line) {
  $('state').textContent = line;
  const item = document.createElement('li');
  item.dataset.state = line;
  item.textContent = `${new Date().toISOString().slice(11, 23)} ${line}`;
  $('state-log').append(item);
}

function setStreaming(streaming) {
  $('stop').disabled = !streaming;
  $('reconnect').disabled = !streaming;
}

function connect(after) {
  const dialect = DIALECTS[answer.format];
  const query = new URLSearchParams({ format: answer.format });
  if (after) query.set('last_event_id', after);
  if (key()) query.set('api_key', key()); // EventSource cannot send headers
  const source = new EventSource(`api/claude/subscribe/${encodeURIComponent(answer.taskId)}?${query}`);
  let resuming = Boolean(after);
  answer.source = source;
  source.onopen = () => setState(resuming && answer.lastId ? `resumed at ${answer.lastId}` : 'live');
  source.onerror = (event) => {
    // A frame named `error` (native, text, anthropic) is a MessageEvent: it goes to the dialect's listener.
    if (answer.source !== source || event instanceof MessageEvent) return;
    if (source.readyState === EventSource.CLOSED) {
      end('error: connection'); // refused for good (not 200): "reconnect now" tries again
      return;
    }
    resuming = true; // the browser comes back by itself, with Last-Event-ID
    setState('reconnecting');
  };
  for (const name of dialect.events) {
    source.addEventListener(name, (event) => {
      if (answer.source !== source || !(event instanceof MessageEvent)) return; // not the connection's error
      const result = dialect.frame(name, event.data);
      if (event.lastEventId) answer.lastId = event.lastEventId;
      if (result === null) return;
      if (result.text) $('answer').append(result.text);
      if (result.done) end('done');
      else if (result.error !== undefined) end(`error: ${result.error}`);
    });
  }
}

function end(line) {
  if (answer.source) answer.source.close();
  answer.source = null;
  setState(line);
  setStreaming(line === 'error: connection'); // the task may still run: stop it, or try again
}

async function send() {
  if (answer.source) answer.source.close();
  answer.source = null;
  answer.taskId = null;
  answer.lastId = null;
  answer.format = $('format').value;
  $('answer').textContent = '';
  $('task-id').textContent = '';
  $('state-log').textContent = '';
  setStreaming(false);
  try {
    const { response, body } = await post('api/claude/prompt/async', { prompt: $('prompt').value });
    if (!response.ok) {
      setState(`error: ${body.type || response.status}`);
      return;
    }
    answer.taskId = body.task_id;
  } catch (error) {
    setState('error: network');
    return;
  }
  $('task-id').textContent = answer.taskId;
  connect(null);
  setStreaming(true);
}

async function stop() {
  if (!answer.taskId) return;
  // A stream that is open ends with the `cancelled` error itself; 409: the task had ended already.
  const watched = answer.source !== null;
  const response = await fetch(`api/claude/task/${encodeURIComponent(answer.taskId)}`, {
    method: 'DELETE',
    headers: headers(),
  });
  if (!watched) setState(response.ok ? 'error: cancelled' : `error: ${response.status}`);
}

function reconnectNow() {
  if (!answer.taskId) return;
  if (answer.source) answer.source.close();
  answer.source = null;
  setState('reconnecting');
  connect(answer.lastId);
  setStreaming(true);
}

// --- Trellis ---

const FINAL = new Set(['completed', 'failed', 'error']);
const trellis = { socket: null };

function trellisStatus(status, message) {
  $('trellis-status').textContent = status;
  $('trellis-status').title = message || '';
}

function showModel(href) {
  let url;
  try {
    url = new URL(href);
  } catch (error) {
    return;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return; // never a javascript: link
  const link = $('trellis-model');
  link.href = url.href;
  link.rel = 'noopener noreferrer';
  link.target = '_blank';
  link.hidden = false;
}

function watch(taskId, tries = 5) {
  const url = new URL(`api/trellis/task/ws/${encodeURIComponent(taskId)}`, location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  if (key()) url.searchParams.set('api_key', key());
  const socket = new WebSocket(url);
  let last = null;
  trellis.socket = socket;
  socket.onmessage = (event) => {
    const m = json(event.data);
    last = m.status;
    trellisStatus(m.status, m.message);
    if (m.status === 'completed' && m.data) showModel(m.data);
  };
  socket.onclose = () => {
    // A stopping replica closes with 1012: come back (through the load balancer) for the latest status.
    if (trellis.socket === socket && !FINAL.has(last) && tries > 1) setTimeout(() => watch(taskId, tries - 1), 1000);
  };
}

async function createTrellis() {
  if (trellis.socket) trellis.socket.close();
  trellis.socket = null;
  $('trellis-model').hidden = true;
  $('trellis-task-id').textContent = '';
  trellisStatus('creating');
  const image = $('trellis-image').value.trim();
  try {
    const { response, body } = await post('api/trellis/task', {
      model: 'Qubico/trellis',
      task_type: 'image-to-3d',
      input: { image },
    });
    const taskId = body.data && body.data.task_id;
    if (!response.ok || !taskId) {
      trellisStatus('error', body.error || body.message || `HTTP ${response.status}`);
      return;
    }
    $('trellis-task-id').textContent = taskId;
    watch(taskId);
  } catch (error) {
    trellisStatus('error', 'network');
  }
}

$('send').addEventListener('click', send);
$('stop').addEventListener('click', stop);
$('reconnect').addEventListener('click', reconnectNow);
$('trellis-create').addEventListener('click', createTrellis);
