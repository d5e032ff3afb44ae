// A small Socket.IO client (protocol v5 over Engine.IO v4, WebSocket transport only):
// connect with {token}, emit with acknowledgements, receive events, answer pings.
// Enough for the dashboard, so the page needs no third-party script.
"use strict";

class LiveSocket {
  constructor(token, { onEvent, onState }) {
    this.token = token;
    this.onEvent = onEvent;       // (name, data) => void
    this.onState = onState;       // ("connecting"|"live"|"refused"|"closed", detail) => void
    this.ws = null;
    this.nextAck = 1;
    this.pending = new Map();     // ack id -> {resolve, timer}
    this.connected = false;
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/socket.io/?EIO=4&transport=websocket`);
    this.ws = ws;
    this.onState("connecting");
    ws.onmessage = (message) => this.receive(String(message.data));
    ws.onclose = () => {
      this.connected = false;
      for (const { resolve, timer } of this.pending.values()) {
        clearTimeout(timer);
        resolve({ ok: false, error: "disconnected" });
      }
      this.pending.clear();
      if (this.ws === ws) this.onState("closed");
    };
  }

  close() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
  }

  receive(text) {
    const kind = text[0];
    if (kind === "0") {            // Engine.IO open: now connect to the "/" namespace
      this.ws.send(`40${JSON.stringify({ token: this.token })}`);
    } else if (kind === "2") {     // ping
      this.ws.send("3");
    } else if (kind === "4") {     // a Socket.IO packet
      this.packet(text.slice(1));
    }
  }

  packet(text) {
    const type = text[0];
    let rest = text.slice(1);
    if (rest.startsWith("/")) rest = rest.slice(rest.indexOf(",") + 1); // a namespace
    const idMatch = /^\d+/.exec(rest);
    const id = idMatch ? Number(idMatch[0]) : null;
    if (idMatch) rest = rest.slice(idMatch[0].length);
    const data = rest ? JSON.parse(rest) : null;
    if (type === "0") {
      this.connected = true;
      this.onState("live");
    } else if (type === "4") {
      this.onState("refused", data && data.message);
      this.close();
    } else if (type === "2" && Array.isArray(data)) {
      this.onEvent(data[0], data[1]);
      if (id !== null) this.ws.send(`43${id}[]`); // acknowledge when asked to
    } else if (type === "3" && id !== null && this.pending.has(id)) {
      const { resolve, timer } = this.pending.get(id);
      clearTimeout(timer);
      this.pending.delete(id);
      resolve(Array.isArray(data) ? data[0] : data);
    } else if (type === "1") {
      this.close();
    }
  }

  call(event, payload, timeoutMs = 10000) {
    return new Promise((resolve) => {
      if (!this.connected) {
        resolve({ ok: false, error: "not connected" });
        return;
      }
      const id = this.nextAck++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        resolve({ ok: false, error: "no answer" });
      }, timeoutMs);
      this.pending.set(id, { resolve, timer });
      this.ws.send(`42${id}${JSON.stringify([event, payload])}`);
    });
  }
}

window.LiveSocket = LiveSocket;
