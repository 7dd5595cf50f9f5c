"""STOMP client scenarios run by tests/stomp*.rs with stomp.py, a STOMP client written by
others (installed by .ci/run). Each scenario drives a broker started by the Rust test and
prints one JSON object of what it observed on its last line; the Rust test asserts on it.

    python3 scenarios.py SCENARIO TRANSPORT PORT [ARG...]

TRANSPORT is `tcp` (the STOMP listener), `tls` (the STOMP-over-TLS listener, trusting the
CA file in $STOMP_TLS_CA) or `ws` (the WebSocket listener, subprotocol v12.stomp). Every wait has a deadline: a scenario fails (exit 1) rather than hang.
"""

import json
import os
import queue
import sys
import time

try:
    import stomp
except ImportError:
    sys.exit("stomp.py is not installed: python3 -m pip install stomp-py==9.0.0 websocket-client==1.9.2 (.ci/run does)")

WAIT = 10.0


class Events(stomp.ConnectionListener):
    """Everything the connection received, in order, for waits with deadlines."""

    def __init__(self):
        self.events = queue.Queue()
        # Frames that arrived while another kind was awaited, in order: the broker may send
        # a delivery before the receipt of the frame that caused it, or after.
        self.set_aside = []

    def on_message(self, frame):
        self.events.put(("message", frame))

    def on_receipt(self, frame):
        self.events.put(("receipt", frame))

    def on_error(self, frame):
        self.events.put(("error", frame))

    def on_disconnected(self):
        self.events.put(("disconnected", None))

    def next(self, kind):
        for i, (got, frame) in enumerate(self.set_aside):
            if got == kind:
                del self.set_aside[i]
                return frame
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind} within {WAIT} s")
            got, frame = self.events.get(timeout=left)
            if got == kind:
                return frame
            if got == "error" and kind != "error":
                raise RuntimeError(f"ERROR while waiting for {kind}: {frame.headers} {frame.body}")
            self.set_aside.append((got, frame))

    def message(self):
        frame = self.next("message")
        return {"headers": frame.headers, "body": frame.body}

    def receipt(self, receipt_id):
        frame = self.next("receipt")
        assert frame.headers["receipt-id"] == receipt_id, frame.headers
        return receipt_id


def connect(transport, port, user="guest", password="guest", vhost="/", heartbeats=(0, 0), binary=False):
    hosts = [("127.0.0.1", port)]
    if transport == "ws":
        conn = stomp.WSConnection(hosts, vhost=vhost, heartbeats=heartbeats, ws_path="/ws",
                                  header={"Sec-WebSocket-Protocol": "v12.stomp"}, binary_mode=binary,
                                  reconnect_attempts_max=1)
    else:
        conn = stomp.Connection12(hosts, vhost=vhost, heartbeats=heartbeats, reconnect_attempts_max=1)
        if transport == "tls":
            # STOMP over TLS (--stomps), trusting the test's CA.
            conn.set_ssl(for_hosts=hosts, ca_certs=os.environ["STOMP_TLS_CA"])
    events = Events()
    conn.set_listener("events", events)
    conn.connect(user, password, wait=True)
    return conn, events


def bad_password(transport, port):
    try:
        connect(transport, port, password="wrong")
    except stomp.exception.ConnectFailedException:
        pass
    else:
        raise AssertionError("connected with a bad password")
    # stomp.py keeps the ERROR frame's text only in its log; connect again by hand.
    conn = (stomp.WSConnection if transport == "ws" else stomp.Connection12)(
        [("127.0.0.1", port)], vhost="/", reconnect_attempts_max=1,
        **({"header": {"Sec-WebSocket-Protocol": "v12.stomp"}} if transport == "ws" else {}))
    events = Events()
    conn.set_listener("events", events)
    conn.connect("guest", "wrong", wait=False)
    error = events.next("error")
    return {"error": error.headers.get("message"), "body": error.body}


def roundtrip(transport, port, queue_name):
    """SEND (receipt), SUBSCRIBE client-individual, MESSAGE, ACK (receipt), UNSUBSCRIBE
    (receipt), DISCONNECT (receipt)."""
    conn, events = connect(transport, port, binary=(transport == "ws"))
    dest = f"/queue/{queue_name}"
    conn.send(dest, "hello stomp", headers={"persistent": "true", "x-trace": "t-1",
                                            "correlation-id": "c-1", "priority": "3"},
              content_type="text/plain", receipt="r-send")
    receipts = [events.receipt("r-send")]
    conn.subscribe(dest, id="s1", ack="client-individual", headers={"receipt": "r-sub"})
    receipts.append(events.receipt("r-sub"))
    message = events.message()
    conn.ack(message["headers"]["ack"], receipt="r-ack")
    receipts.append(events.receipt("r-ack"))
    conn.unsubscribe(id="s1", headers={"receipt": "r-unsub"})
    receipts.append(events.receipt("r-unsub"))
    conn.disconnect(receipt="r-bye")
    return {"message": message, "receipts": receipts}


def ack_mode(transport, port, queue_name, mode, ack_index):
    """Subscribes to a queue holding three messages in `mode`, acks the message at
    `ack_index` (with a receipt), then disconnects: what was not acked goes back."""
    conn, events = connect(transport, port)
    conn.subscribe(f"/amq/queue/{queue_name}", id="s", ack=mode, headers={"prefetch-count": "10"})
    messages = [events.message() for _ in range(3)]
    if mode != "auto":
        conn.ack(messages[int(ack_index)]["headers"]["ack"], receipt="r-ack")
    else:
        conn.send(f"/queue/{queue_name}-marker", "x", receipt="r-ack")
    events.receipt("r-ack")
    conn.disconnect(receipt="bye")
    return {"bodies": [m["body"] for m in messages]}


def nack_dead_letter(transport, port, queue_name):
    conn, events = connect(transport, port)
    conn.send(f"/queue/{queue_name}", "poison", receipt="sent")
    events.receipt("sent")
    conn.subscribe(f"/queue/{queue_name}", id="work", ack="client-individual")
    message = events.message()
    conn.nack(message["headers"]["ack"], receipt="nacked", requeue="false")
    events.receipt("nacked")
    conn.subscribe(f"/amq/queue/{queue_name}.dlq", id="dead", ack="auto")
    dead = events.message()
    conn.disconnect(receipt="bye")
    return {"dead": dead}


def topics(transport, port):
    """Two subscribers on /topic/ patterns, one durable subscription kept across a
    reconnect, and /exchange/ destinations."""
    a, events_a = connect(transport, port)
    b, events_b = connect(transport, port)
    a.subscribe("/topic/news.*", id="a", headers={"receipt": "ra"})
    events_a.receipt("ra")
    b.subscribe("/topic/news.eu", id="b", headers={"receipt": "rb"})
    events_b.receipt("rb")
    a.send("/topic/news.eu", "eu story", receipt="s1")
    events_a.receipt("s1")
    got_a = events_a.message()
    got_b = events_b.message()
    # A durable subscription: its queue keeps what is published while it is away.
    b.subscribe("/topic/durable.k", id="d1", headers={"durable": "true", "auto-delete": "false", "receipt": "rd"})
    events_b.receipt("rd")
    b.disconnect(receipt="bye")
    a.send("/topic/durable.k", "while away", receipt="s2")
    events_a.receipt("s2")
    b, events_b = connect(transport, port)
    b.subscribe("/topic/durable.k", id="d1", headers={"durable": "true", "auto-delete": "false"})
    durable = events_b.message()
    # /exchange/NAME/KEY through an exchange the test declared.
    b.subscribe("/exchange/stomp-fanout", id="fan", headers={"receipt": "rf"})
    events_b.receipt("rf")
    a.send("/exchange/stomp-fanout/any.key", "fanned", receipt="s3")
    events_a.receipt("s3")
    fanned = events_b.message()
    a.disconnect(receipt="bye-a")
    b.disconnect(receipt="bye-b")
    return {"a": got_a, "b": got_b, "durable": durable, "fanned": fanned}


def temp_queue(transport, port):
    """Request and reply through /temp-queue/: the reply comes back on the requester's
    own reply queue, marked with its temp-queue destination as subscription."""
    server, server_events = connect(transport, port)
    server.subscribe("/queue/stomp-rpc", id="rpc", headers={"receipt": "r"})
    server_events.receipt("r")
    client, client_events = connect(transport, port)
    client.send("/queue/stomp-rpc", "ping", headers={"reply-to": "/temp-queue/answers"})
    request = server_events.message()
    server.send(request["headers"]["reply-to"], "pong")
    reply = client_events.message()
    server.disconnect(receipt="bye-s")
    client.disconnect(receipt="bye-c")
    return {"request": request, "reply": reply}


def transactions(transport, port, queue_name):
    conn, events = connect(transport, port)
    dest = f"/queue/{queue_name}"
    conn.subscribe(dest, id="s", ack="auto", headers={"receipt": "sub"})
    events.receipt("sub")
    tx = conn.begin()
    conn.send(dest, "in-tx-1", transaction=tx)
    conn.send(dest, "in-tx-2", transaction=tx)
    # Sent after the transaction's sends, arrives before them: they wait for COMMIT.
    conn.send(dest, "outside", receipt="outside")
    events.receipt("outside")
    first = events.message()["body"]
    conn.commit(tx, headers={"receipt": "commit"})
    events.receipt("commit")
    committed = [events.message()["body"], events.message()["body"]]
    aborted_tx = conn.begin()
    conn.send(dest, "aborted", transaction=aborted_tx)
    conn.abort(aborted_tx, headers={"receipt": "abort"})
    events.receipt("abort")
    conn.send(dest, "after-abort")
    after = events.message()["body"]
    conn.disconnect(receipt="bye")
    return {"first": first, "committed": committed, "after": after}


def send_then_disconnect(transport, port, destination, body, *headers):
    """One SEND with `name=value` headers (receipt: after the confirm), then DISCONNECT."""
    conn, events = connect(transport, port)
    extra = dict(h.split("=", 1) for h in headers)
    conn.send(destination, body, headers=extra, receipt="sent")
    events.receipt("sent")
    conn.disconnect(receipt="bye")
    return {"sent": True}


def subscribe_then_disconnect(transport, port, destination, *headers):
    """One SUBSCRIBE with `name=value` headers (receipt), then DISCONNECT."""
    conn, events = connect(transport, port)
    extra = dict(h.split("=", 1) for h in headers)
    conn.subscribe(destination, id="s", ack="client-individual", headers={**extra, "receipt": "sub"})
    events.receipt("sub")
    conn.disconnect(receipt="bye")
    return {"subscribed": True}


def receive_one(transport, port, destination):
    conn, events = connect(transport, port)
    conn.subscribe(destination, id="one", ack="client-individual")
    message = events.message()
    conn.ack(message["headers"]["ack"], receipt="acked")
    events.receipt("acked")
    conn.disconnect(receipt="bye")
    return {"message": message}


def refused(transport, port, user, password, vhost, action):
    """Connects as `user` and tries `action` (send or connect): the ERROR it gets."""
    conn = (stomp.WSConnection if transport == "ws" else stomp.Connection12)(
        [("127.0.0.1", port)], vhost=vhost, reconnect_attempts_max=1,
        **({"header": {"Sec-WebSocket-Protocol": "v12.stomp"}} if transport == "ws" else {}))
    events = Events()
    conn.set_listener("events", events)
    conn.connect(user, password, wait=(action != "connect"))
    if action == "send":
        conn.send("/queue/stomp-readonly", "x", receipt="sent")
    elif action == "subscribe":
        conn.subscribe("/amq/queue/stomp-readonly", id="s", headers={"receipt": "sub"})
    error = events.next("error")
    return {"error": error.headers.get("message"), "receipt": error.headers.get("receipt-id")}


def certificate_login(transport, port, queue_name, login):
    """Over TLS with the client certificate in $STOMP_TLS_CERT / $STOMP_TLS_KEY, CONNECT
    without `passcode` (and with `login` unless it is `-`): a SEND coming back as a MESSAGE
    when the certificate logged in, else the ERROR."""
    hosts = [("127.0.0.1", port)]
    conn = stomp.Connection12(hosts, vhost="/", reconnect_attempts_max=1)
    conn.set_ssl(for_hosts=hosts, ca_certs=os.environ["STOMP_TLS_CA"],
                 cert_file=os.environ["STOMP_TLS_CERT"], key_file=os.environ["STOMP_TLS_KEY"])
    events = Events()
    conn.set_listener("events", events)
    try:
        conn.connect(None if login == "-" else login, None, wait=True)
    except stomp.exception.ConnectFailedException:
        error = events.next("error")
        return {"error": error.headers.get("message")}
    dest = f"/queue/{queue_name}"
    conn.send(dest, "by certificate", receipt="r-send")
    events.receipt("r-send")
    conn.subscribe(dest, id="s1", ack="auto")
    message = events.message()
    conn.disconnect(receipt="r-bye")
    return {"body": message["body"]}


def send_refused(transport, port, destination, *headers):
    """One SEND (receipt) with `name=value` headers that the broker refuses: the ERROR it gets."""
    conn, events = connect(transport, port)
    extra = dict(h.split("=", 1) for h in headers)
    conn.send(destination, "refused", headers=extra, receipt="sent")
    error = events.next("error")
    return {"error": error.headers.get("message"), "receipt": error.headers.get("receipt-id")}


SCENARIOS = {f.__name__: f for f in [bad_password, roundtrip, ack_mode, nack_dead_letter, topics,
                                      temp_queue, transactions, send_then_disconnect, subscribe_then_disconnect, receive_one,
                                      refused, send_refused, certificate_login]}

if __name__ == "__main__":
    name, transport, port, *args = sys.argv[1:]
    result = SCENARIOS[name](transport, int(port), *args)
    print(json.dumps(result))
    sys.stdout.flush()
