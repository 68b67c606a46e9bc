"""HTTP and WebSocket routes: parse -> call -> render."""
