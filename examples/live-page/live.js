// The live page: one STOMP subscription per lane to `/exchange/EXCHANGE/LANE` over the
// broker's WebSocket listener, with @stomp/stompjs (vendor/). Settings come from the URL:
//   index.html?ws=ws://127.0.0.1:6789/ws&login=guest&passcode=guest&vhost=/&exchange=orders&lanes=standard,express
"use strict";

const params = new URLSearchParams(window.location.search);
const setting = (name, fallback) => params.get(name) || fallback;
const WS = setting("ws", "ws://127.0.0.1:6789/ws");
const EXCHANGE = setting("exchange", "orders");
const LANES = setting("lanes", "standard,express").split(",").filter(Boolean);
const SHOWN = 15; // the newest messages listed per lane

document.getElementById("exchange").textContent = EXCHANGE;
const status = document.getElementById("status");
function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

// A column per lane: its count and newest messages.
const lanes = new Map();
for (const lane of LANES) {
  const section = document.createElement("section");
  section.className = "lane";
  section.dataset.lane = lane;
  const title = document.createElement("h2");
  const name = document.createElement("span");
  name.textContent = lane;
  const count = document.createElement("span");
  count.className = "count";
  count.textContent = "0";
  title.append(name, count);
  const list = document.createElement("ol");
  section.append(title, list);
  document.getElementById("lanes").append(section);
  lanes.set(lane, { section, count, list, received: 0 });
}

function show(lane, message) {
  const column = lanes.get(lane);
  column.received += 1;
  column.count.textContent = String(column.received);
  column.section.dataset.received = String(column.received);
  const item = document.createElement("li");
  item.className = "fresh";
  item.dataset.body = message.body;
  const body = document.createElement("span");
  body.textContent = message.body;
  const key = document.createElement("span");
  key.className = "key";
  // `/exchange/NAME/ROUTING-KEY`: the key the order was published with.
  key.textContent = message.headers.destination.split("/").slice(3).join("/");
  item.append(body, key);
  column.list.prepend(item);
  while (column.list.children.length > SHOWN) column.list.lastChild.remove();
}

const client = new StompJs.Client({
  brokerURL: WS,
  connectHeaders: {
    login: setting("login", "guest"),
    passcode: setting("passcode", "guest"),
    host: setting("vhost", "/"),
  },
  reconnectDelay: 2000,
  onConnect: () => {
    for (const lane of LANES) {
      client.subscribe(`/exchange/${EXCHANGE}/${lane}`, (message) => show(lane, message));
    }
    setStatus("connected", `connected to ${WS}, exchange ${EXCHANGE}`);
  },
  onStompError: (frame) => setStatus("error", `broker error: ${frame.headers.message}`),
  onWebSocketClose: () => setStatus("closed", `disconnected from ${WS}; retrying…`),
});
client.activate();
