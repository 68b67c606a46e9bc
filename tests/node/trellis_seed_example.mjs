// Seed 000's README example, verbatim but for the URL (argv) and the closing helper; Node's WebSocket is
// the browser API (node --experimental-websocket). Prints what the example logs, one line each.
const [url, taskId] = process.argv.slice(2);
const logged = [];
const console = { log: (...a) => logged.push(["log", a.join(" ")]), error: (...a) => logged.push(["error", a.join(" ")]) };
const done = new Promise((resolve) => setTimeout(resolve, 15000));

// --- from the seed README (URL replaced) ---
// Connect to the WebSocket
const ws = new WebSocket(`${url}/api/trellis/task/ws/${taskId}`);

// Handle messages from the server
ws.onmessage = function(event) {
  const data = JSON.parse(event.data);

  if (data.status === 'completed') {
    console.log('3D model ready:', data.data);
    ws.close();
  } else if (data.status === 'failed' || data.status === 'error') {
    console.error('Error:', data.message);
    ws.close();
  } else {
    console.log('Status update:', data.message);
  }
};

// Close the connection
ws.onclose = function() {
  console.log('Connection closed');
  finish();
};

// To manually close the connection
function closeConnection() {
  ws.send('close');
}
// --- end of the seed's code ---

if (process.argv[4] === "close-early") {
  ws.onopen = () => setTimeout(closeConnection, 200);
}
function finish() {
  process.stdout.write(JSON.stringify(logged) + "\n");
  process.exit(0);
}
await done;
process.stdout.write(JSON.stringify(logged) + "\n");
process.exit(1);
